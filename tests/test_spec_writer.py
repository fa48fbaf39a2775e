"""One spec writer, the inverse of the parser: random specs (member paths of printable Unicode with quotes,
backslashes, apostrophes and spaces; weights; folds and "all"; every top-level and post-processing key) are written
and read back equal; select's provenance comments survive a rewrite (export-onnx's backend)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.postprocess import PostProcessing
from panther_ensemble.engine.spec import EnsembleSpec, MemberId, MemberSpec, load_spec, member_labels
from panther_ensemble.engine.spec_writer import SpecComments, spec_text, write_spec

# printable Unicode: letters, digits, marks, punctuation (quotes, backslash, apostrophe), symbols, spaces
PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S", "Zs"))
SEGMENT = st.text(PRINTABLE, min_size=1, max_size=12).filter(lambda t: "/" not in t and t.strip(".") != "")
SLUG = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
POSITIVE = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def models(draw) -> str:
    """A model folder under the weights root: Dataset/Trainer__Plans__configuration, or any relative path."""
    if draw(st.booleans()):
        return f"{draw(SEGMENT)}/{draw(SEGMENT)}__{draw(SEGMENT)}__{draw(SEGMENT)}"
    return "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=3)))


@st.composite
def members(draw) -> MemberSpec:
    fold = draw(st.one_of(st.integers(0, 99), st.just("all")))
    return MemberSpec(draw(models()), fold, draw(SEGMENT), draw(POSITIVE))


@st.composite
def postprocessings(draw, tumor_label: int) -> PostProcessing | None:
    kind = draw(st.sampled_from(("none", "empty", "steps", "nnunet")))
    if kind == "none":
        return None
    if kind == "empty":
        return PostProcessing()
    if kind == "nnunet":
        return PostProcessing(nnunet="/".join(draw(st.lists(SEGMENT, min_size=1, max_size=3))))
    organ = draw(st.one_of(st.none(), st.integers(1, 9).filter(lambda v: v != tumor_label)))
    return PostProcessing(draw(st.booleans()), draw(st.one_of(st.none(), st.floats(0, 1e5))), organ,
                          None if organ is None else draw(st.floats(0, 100)),
                          draw(st.one_of(st.none(), st.floats(0.01, 0.99))))


@st.composite
def specs(draw) -> EnsembleSpec:
    tumor_label = draw(st.integers(1, 9))
    pool = draw(st.lists(members(), min_size=1, max_size=6, unique_by=lambda m: m.id))
    limit = draw(st.one_of(st.none(), st.floats(60, 3600)))
    budget = draw(st.one_of(st.none(), st.floats(1, limit or 3600)))
    return EnsembleSpec(Path("spec.toml"), draw(SLUG), draw(SLUG), tumor_label, tuple(pool), budget,
                        draw(st.sampled_from((None, "torch", "onnxruntime"))), draw(postprocessings(tumor_label)),
                        limit, draw(st.one_of(st.none(), SEGMENT)))


@given(specs(), st.lists(st.text(PRINTABLE, max_size=40), max_size=3))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_spec_the_parser_accepts_is_written_back_equal(tmp_path_factory, spec, header):
    path = tmp_path_factory.mktemp("spec") / "chosen.toml"
    comments = SpecComments(tuple(header), {m.id: (f"about {m.model}",) for m in spec.members[:2]},
                            ("chosen with the members",))
    write_spec(spec, path, comments)
    assert load_spec(path) == replace(spec, path=path)
    # comments come back line by line, without trailing spaces
    expected_header = tuple(line.rstrip() for text in header for line in text.splitlines() or [""])
    assert SpecComments.of(path, load_spec(path)) == SpecComments(
        expected_header, {k: tuple(line.rstrip() for line in v) for k, v in comments.members.items()},
        comments.postprocessing if spec.postprocessing is not None else ())


def test_a_model_folder_with_an_apostrophe_quotes_and_a_backslash(tmp_path):
    """What select used to write as TOML its own parser refused (a global ' -> " replace)."""
    member = MemberSpec("Dataset901_O'Neil \"quoted\"/nnUNetTrainer__Plans\\x__3d_fullres", 0, "checkpoint_best.pth")
    spec = EnsembleSpec(tmp_path / "s.toml", "abdominal-t1-mri", "out", 2, (member,), tumor_label_name="tumor")
    write_spec(spec, spec.path)
    assert load_spec(spec.path).members == (member,)
    assert tomllib.loads(spec.path.read_text())["member"][0]["model"] == member.model


def test_nothing_is_written_where_the_spec_would_not_read_back(tmp_path):
    spec = EnsembleSpec(tmp_path / "s.toml", "a", "b", 1, (MemberSpec("m", 0, "c.pth", math.inf),))
    with pytest.raises(PantherError, match="'weight' in \\[\\[member\\]\\] 1 must be a finite number above 0"):
        write_spec(spec, spec.path)
    assert not spec.path.exists()


def test_a_spec_listing_one_member_twice_is_refused(tmp_path):
    text = spec_text(EnsembleSpec(tmp_path / "s.toml", "a", "b", 1, (MemberSpec("D/T__P__c", 0, "x.pth"),
                                                                       MemberSpec("D/T__P__c", 1, "x.pth"))))
    path = tmp_path / "s.toml"
    path.write_text(text.replace("fold = 1", "fold = 0"))
    with pytest.raises(PantherError, match=r"\[\[member\]\] 2 is \[\[member\]\] 1 again \(D/T__P__c/fold_0/x.pth\)"):
        load_spec(path)


def test_one_identity_tells_apart_members_of_a_multi_stage_fine_tuning():
    """One trainer fold fine-tuned in three datasets with two plans: every member its own label, the parts that
    differ in it."""
    ids = [MemberId.of(f"{dataset}/nnUNetTrainer__{plans}__3d_fullres", 0, "checkpoint_final.pth")
           for dataset in ("Dataset900_Pretrain", "Dataset901_X", "Dataset902_Y") for plans in ("PlansA", "PlansB")]
    labels = member_labels(ids)
    assert len(set(labels.values())) == 6
    assert labels[ids[3]] == "Dataset901_X nnUNetTrainer PlansB fold 0 final"
    assert str(ids[0]) == "Dataset900_Pretrain/nnUNetTrainer__PlansA__3d_fullres/fold_0/checkpoint_final.pth"
    same_stem = [MemberId.of("D/T__P__c", 0, "checkpoint_best.pth"), MemberId.of("D/T__P__c", 0, "best.pth")]
    assert list(member_labels(same_stem).values()) == ["T fold 0 checkpoint_best.pth", "T fold 0 best.pth"]
