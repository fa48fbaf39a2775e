"""The specs that ship in ensemble/ parse, name the sockets the container serves, and carry the post-processing
select chose with their members (weights/README.md, "How the specs were chosen")."""

from pathlib import Path

from panther_ensemble.app.locations import find_spec
from panther_ensemble.engine.postprocess import PostProcessing

ENSEMBLE_DIR = Path(__file__).resolve().parents[1] / "ensemble"


def test_task_specs_pick_their_socket():
    task1 = find_spec("abdominal-t1-mri", [ENSEMBLE_DIR])
    task2 = find_spec("abdominal-t2-mri", [ENSEMBLE_DIR])
    assert task1.path.name == "task1.toml" and len(task1.members) == 5
    assert sorted(m.weight for m in task1.members) == [1, 1, 1, 1, 3]
    assert task2.path.name == "task2.toml" and len(task2.members) == 2
    assert task1.postprocessing == PostProcessing(organ_label=2, near_organ_mm=0.0, never_empty_floor=0.15)
    assert task2.postprocessing == PostProcessing(keep_largest=True, organ_label=2, near_organ_mm=10.0,
                                                  never_empty_floor=0.15)
    assert {s.output_socket for s in (task1, task2)} == {"pancreatic-tumor-segmentation"}
    assert task1.tumor_label == task2.tumor_label == 1
