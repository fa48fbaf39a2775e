"""Networks loading in the background: verified as they are read, released when asked, never waited for at exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from conftest import gc_input

import panther_ensemble.engine.loading as loading
from panther_ensemble.app.manifest import write_manifest
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.members import describe_member
from panther_ensemble.engine.spec import load_spec


def members(workspace):
    return [describe_member(workspace.weights, m) for m in load_spec(workspace.t1_spec).members]


def test_each_network_is_verified_as_it_loads_and_a_bad_one_fails_where_asked_for(workspace):
    described = members(workspace)
    order = []

    def verify(member):
        order.append(member.spec.name)
        if member is described[2]:
            raise PantherError(f"{member.network_file}: sha256 differs")

    loader = loading.NetworkLoader(described, loading.torch.device("cpu"), verify)
    assert loader.network(described[0]) is not None and loader.network(described[1]) is not None
    with pytest.raises(PantherError, match="sha256 differs"):
        loader.network(described[2])
    assert loader.network(described[3]) is not None
    loader.cancel()
    assert order[:4] == [m.spec.name for m in described[:4]]


def wait_for(condition, seconds: float = 30.0) -> bool:
    """Polls `condition` until it holds or `seconds` pass: a loaded machine may take its time, never the test's."""
    until = time.monotonic() + seconds
    while not condition() and time.monotonic() < until:
        time.sleep(0.02)
    return condition()


def test_networks_not_kept_are_loaded_at_most_one_ahead(workspace, monkeypatch):
    described = members(workspace)
    loaded = []
    original = loading.load_network
    monkeypatch.setattr(loading, "load_network", lambda m, d: loaded.append(m.spec.name) or original(m, d))
    loader = loading.NetworkLoader(described, loading.torch.device("cpu"), keep=False)
    assert wait_for(lambda: len(loaded) >= 2)
    time.sleep(0.5)  # time for a third, were it to start
    assert len(loaded) == 2  # the first and the next one
    loader.network(described[0])
    loader.done_with(described[0])
    assert wait_for(lambda: len(loaded) >= 3)
    time.sleep(0.5)
    assert len(loaded) == 3
    with pytest.raises(loading.CancelledError):  # released after use: the next image loads it again
        loader.network(described[0])
    loader.next_image()
    assert loader.network(described[0]) is not None
    loader.cancel()


def test_cancel_stops_loading(workspace, monkeypatch):
    """The load in flight at cancel() may finish; nothing starts after it. The second load waits until the cancel
    (however slowly the machine schedules the two threads)."""
    import threading

    described = members(workspace)
    started, cancelled = [], threading.Event()
    original = loading.load_network

    def held(member, device):
        started.append(member)
        if member is not described[0]:
            cancelled.wait(30)
        return original(member, device)

    monkeypatch.setattr(loading, "load_network", held)
    loader = loading.NetworkLoader(described, loading.torch.device("cpu"))
    loader.network(described[0])
    assert wait_for(lambda: len(started) >= 2)
    loader.cancel()
    cancelled.set()
    time.sleep(1.0)
    assert len(started) == 2


def test_process_exit_does_not_wait_for_networks_of_dropped_members(workspace, tmp_path):
    """Every member after the first takes 60 s to load; the budget drops them: the process ends right after its
    mask is written."""
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": dict(shape_zyx=(8, 24, 28),
                                                                        spacing_xyz=(1, 1, 3), seed=4)})
    script = textwrap.dedent(f"""
        import sys, time
        import panther_ensemble.engine.loading as loading
        original, first = loading.load_network, []
        def slow(member, device):
            if first:
                time.sleep(60)
            first.append(member)
            return original(member, device)
        loading.load_network = slow
        from panther_ensemble.cli import console_main
        sys.argv = ["panther-ensemble", "predict", "--input", {str(input_dir)!r}, "--output", {str(tmp_path / 'out')!r},
                    "--ensemble", {str(workspace.t1_spec)!r}, "--weights", {str(workspace.weights)!r},
                    "--device", "cpu", "--budget", "3"]
        console_main()
    """)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "summary case.mha: 1/6 members used, 5 dropped" in result.stdout
    assert took < 30, f"the process took {took:.0f}s to end"


def test_manifest_failure_of_a_later_member_writes_nothing(workspace, tmp_path, capsys):
    import shutil

    from panther_ensemble.cli import main

    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    write_manifest(weights)
    last = load_spec(workspace.t1_spec).members[-1].checkpoint_path(weights)
    last.write_bytes(last.read_bytes()[:-1] + b"x")
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": dict(shape_zyx=(8, 24, 28),
                                                                        spacing_xyz=(1, 1, 3), seed=4)})
    output = tmp_path / "out"
    assert main(["predict", "--input", str(input_dir), "--output", str(output), "--ensemble", str(workspace.t1_spec),
                 "--weights", str(weights), "--device", "cpu", "--budget", "0"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"error: {last}: sha256 differs from {weights / 'weights.sha256'} (corrupt or replaced weights)"]
    assert not [p for p in output.rglob("*") if p.is_file()]


class _FakeMember:
    def __init__(self, index: int) -> None:
        self.index = index
        self.id = ("member", index)  # the loader keys its futures by a member's identity


def test_moving_through_many_images_with_members_dropped_is_race_free(monkeypatch):
    """The T4 path (networks not kept): hundreds of images, each with members dropped at random (the deadline), a
    random timeout on the wait, loads of random length. Never more than two networks hold slots or load at once,
    no member loads twice for one image, every future ends, and no loading thread fails (a stale thread loading into
    the next image's futures raised InvalidStateError before generations)."""
    import random
    import threading

    rng = random.Random(0)
    state = {"loading": {}, "max_loading": 0, "max_held": 0}  # loads in progress per loader
    loads: dict[int, list[int]] = {}  # per image, the members loaded
    current_image = [0]
    lock = threading.Lock()
    failures = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))

    def fake_load(member, device):
        run = current_image[0] // 10
        with lock:
            state["loading"][run] = state["loading"].get(run, 0) + 1
            state["max_loading"] = max(state["max_loading"], state["loading"][run])
            loads.setdefault(current_image[0], []).append(member.index)
        time.sleep(rng.uniform(0, 0.002))
        with lock:
            state["loading"][run] -= 1
        return object()

    monkeypatch.setattr(loading, "load_network", fake_load)
    members_ = [_FakeMember(k) for k in range(5)]
    for run in range(300):
        current_image[0] = run * 10
        loader = loading.NetworkLoader(members_, loading.torch.device("cpu"), keep=False)
        for image in range(rng.randint(1, 4)):
            current_image[0] = run * 10 + image
            if image:
                loader.next_image()
            for member in members_:
                state["max_held"] = max(state["max_held"], loader.held)
                if rng.random() < 0.15:
                    break  # the deadline drops this member and the rest
                try:
                    loader.network(member, rng.choice([None, 0.0005, 0.01]))
                except TimeoutError:
                    break  # still loading when the budget ran out
                loader.done_with(member)
        futures = list(loader._generation.futures.values())
        loader.cancel()
        for future in futures:  # every future ends: a network, an error, cancelled, or soon done
            deadline = time.monotonic() + 2
            while not future.done():
                assert time.monotonic() < deadline, "a future never ended"
                time.sleep(0.001)
    time.sleep(0.05)
    assert failures == []
    assert state["max_loading"] <= 2 and state["max_held"] <= 2, {k: state[k] for k in ("max_loading", "max_held")}
    for image, loaded in loads.items():  # a stale thread of the last image may add none to this one
        assert len(loaded) == len(set(loaded)), (image, loaded)


def test_hashes_stream_the_file_never_whole_in_memory(tmp_path):
    """A checkpoint or a model tarball is gigabytes: its sha256 is computed a block at a time (the manifest's
    check, export-model's digest), so a 1 GiB file costs the hashing process a few MB."""
    import subprocess
    import sys

    big = tmp_path / "big.bin"
    with open(big, "wb") as file:
        file.truncate(2 ** 30)  # sparse: 1 GiB to read, nothing on disk
    code = ("import resource, sys\nfrom panther_ensemble.app.manifest import sha256\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nsha256(sys.argv[1])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grown_kib = int(subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True,
                                   check=True).stdout)
    assert grown_kib < 64 * 1024, grown_kib  # under 64 MiB more while 1 GiB went through
