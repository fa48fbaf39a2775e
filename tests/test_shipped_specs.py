"""The specs that ship in ensemble/ parse and name the sockets the container serves."""

from pathlib import Path

from panther_ensemble.app.locations import find_spec

ENSEMBLE_DIR = Path(__file__).resolve().parents[1] / "ensemble"


def test_task_specs_pick_their_socket():
    task1 = find_spec("abdominal-t1-mri", [ENSEMBLE_DIR])
    task2 = find_spec("abdominal-t2-mri", [ENSEMBLE_DIR])
    assert task1.path.name == "task1.toml" and len(task1.members) == 3
    assert task2.path.name == "task2.toml" and len(task2.members) == 2
    assert {s.output_socket for s in (task1, task2)} == {"pancreatic-tumor-segmentation"}
    assert task1.tumor_label == task2.tumor_label == 1
