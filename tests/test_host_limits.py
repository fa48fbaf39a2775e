"""What limits the process (engine.host_limits): memory (the machine, the cgroups from the process's own up to the
root (Docker, Slurm, Apptainer; v1 and v2), RLIMIT_DATA (Grand Challenge's shim sets it) and RLIMIT_AS) and CPUs (the
cores it may run on, the cgroups' CPU quotas), and torch's CPU threads set from them."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from panther_ensemble.engine import host_limits
from panther_ensemble.engine.host_limits import Room, available_memory, cgroup_rooms, rlimit_rooms, usable_cpus

GiB = 2 ** 30
NO_RLIMITS = staticmethod(lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def proc_self(tmp_path: Path, cgroup: str, status: str = "") -> Path:
    folder = tmp_path / "proc-self"
    folder.mkdir(exist_ok=True)
    (folder / "cgroup").write_text(cgroup)
    (folder / "status").write_text(status)
    return folder


def cgroup(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")


def test_a_container_cgroup_v2_and_v1_at_the_mount(tmp_path):
    """Docker: /proc/self/cgroup says "/" (v2, a cgroup namespace) or the host's path (v1): the mount is the
    container's own cgroup."""
    root = tmp_path / "v2"
    cgroup(root, {"memory.max": str(16 * GiB), "memory.current": str(10 * GiB),
                  "memory.stat": f"anon {8 * GiB}\ninactive_file {2 * GiB}"})
    assert cgroup_rooms(root, proc_self(tmp_path, "0::/\n")) == [
        Room(8 * GiB, f"the cgroup memory limit ({root / 'memory.max'}: 16.0 GiB)")]
    v1 = tmp_path / "v1"
    cgroup(v1 / "memory", {"memory.limit_in_bytes": str(4 * GiB), "memory.usage_in_bytes": str(GiB),
                           "memory.stat": f"total_inactive_file {GiB // 2}"})
    rooms = cgroup_rooms(v1, proc_self(tmp_path, "12:memory:/docker/0123abcd\n4:cpu,cpuacct:/docker/0123abcd\n"))
    assert [r.bytes for r in rooms] == [3.5 * GiB]
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_rooms(v1, proc_self(tmp_path, "12:memory:/\n")) == []
    (root / "memory.max").write_text("max\n")
    assert cgroup_rooms(root, proc_self(tmp_path, "0::/\n")) == []


def test_slurm_job_limit_on_an_ancestor_v2(tmp_path):
    """sbatch --mem=16G: the limit is on the job's cgroup, the process sits in a task's cgroup below it."""
    root = tmp_path / "cg"
    job = root / "system.slice" / "slurmstepd.scope" / "job_5"
    cgroup(job, {"memory.max": str(16 * GiB), "memory.current": str(3 * GiB)})
    cgroup(job / "step_0" / "user" / "task_0", {"memory.max": "max", "memory.current": str(GiB)})
    cgroup(root / "system.slice", {"memory.max": "max"})
    rooms = cgroup_rooms(root, proc_self(tmp_path, "0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_0\n"))
    assert rooms == [Room(13 * GiB, f"the cgroup memory limit ({job / 'memory.max'}: 16.0 GiB)")]


def test_every_ancestor_counts_and_the_smallest_room_wins(tmp_path):
    """Apptainer's --memory on a cgroup inside a Slurm job's (v1): both limits apply."""
    root = tmp_path / "cg"
    job = root / "memory" / "slurm" / "uid_0" / "job_7"
    cgroup(job, {"memory.limit_in_bytes": str(32 * GiB), "memory.usage_in_bytes": str(30 * GiB)})
    inner = job / "step_0" / "apptainer"
    cgroup(inner, {"memory.limit_in_bytes": str(8 * GiB), "memory.usage_in_bytes": str(GiB)})
    rooms = cgroup_rooms(root, proc_self(tmp_path, "9:memory:/slurm/uid_0/job_7/step_0/apptainer\n"))
    assert sorted(r.bytes for r in rooms) == [2 * GiB, 7 * GiB]
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {100 * 2 ** 20} kB\n")
    room = available_memory(meminfo, root, proc_self(tmp_path, "9:memory:/slurm/uid_0/job_7/step_0/apptainer\n"),
                            NO_RLIMITS)
    assert room == Room(2 * GiB, f"the cgroup memory limit ({job / 'memory.limit_in_bytes'}: 32.0 GiB)")


def test_rlimit_data_and_as_less_what_the_process_uses(tmp_path):
    status = f"VmSize:\t{6 * 2 ** 20} kB\nVmData:\t{2 * 2 ** 20} kB\n"
    limits = {resource.RLIMIT_DATA: (15 * GiB, 15 * GiB), resource.RLIMIT_AS: (64 * GiB, resource.RLIM_INFINITY)}
    rooms = rlimit_rooms(proc_self(tmp_path, "0::/\n", status), lambda which: limits[which])
    assert rooms == [Room(13 * GiB, "the process's data limit (RLIMIT_DATA: 15.0 GiB; Grand Challenge's "
                                    "sagemaker-shim sets it to the job's memory)"),
                     Room(58 * GiB, "the process's address-space limit (RLIMIT_AS: 64.0 GiB)")]
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {256 * 2 ** 20} kB\nMemAvailable: {200 * 2 ** 20} kB\n")
    room = available_memory(meminfo, tmp_path / "none", proc_self(tmp_path, "0::/\n", status),
                            lambda which: limits[which])
    assert room.bytes == 13 * GiB and "RLIMIT_DATA" in room.what  # GC: the shim's limit below the machine's
    assert available_memory(meminfo, tmp_path / "none", proc_self(tmp_path, "0::/\n", status), NO_RLIMITS) == \
        Room(200 * GiB, "the machine's available memory")


def test_the_real_process_under_a_real_rlimit_data():
    """As GC's shim does it: RLIMIT_DATA set before the process starts, inherited; the room is the limit less the
    process's VmData."""
    code = ("import resource\nfrom panther_ensemble.engine.host_limits import available_memory\n"
            "used = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmData:')) * 1024\n"
            "room = available_memory()\nprint(room.bytes, used, room.what)")

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (3 * GiB, 3 * GiB))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit, check=True)
    room, used, what = done.stdout.split(" ", 2)
    assert what.startswith("the process's data limit (RLIMIT_DATA: 3.0 GiB")
    assert abs(int(room) - (3 * GiB - int(used))) < 64 * 2 ** 20  # VmData moves a little between the two reads


def test_paths_outside_the_cgroup_mount_are_not_followed(tmp_path):
    """/proc/self/cgroup is trusted only for folders under the mount."""
    root = tmp_path / "cg"
    cgroup(root, {"memory.max": str(4 * GiB), "memory.current": "0"})
    cgroup(tmp_path / "elsewhere", {"memory.max": str(GiB), "memory.current": "0"})
    rooms = cgroup_rooms(root, proc_self(tmp_path, "0::/../elsewhere\n"))
    assert [r.bytes for r in rooms] == [4 * GiB]
    assert host_limits.UNLIMITED > 2 ** 59


def predict_in_a_child(workspace, tmp_path, shape_zyx, code: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`code` (ending in the CLI's main on its argv) predicting one int16 noise case of `shape_zyx` with the
    workspace's Task 1 spec, in a fresh process; returns it and the case's path."""
    import numpy as np
    import SimpleITK as sitk

    case = tmp_path / "input" / "images" / "abdominal-t1-mri" / "case.mha"
    case.parent.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(1, 900, shape_zyx, dtype=np.int16))
    image.SetSpacing((0.7, 0.7, 1.5))
    sitk.WriteImage(image, str(case))
    done = subprocess.run([sys.executable, "-c", code, "predict", "--input", str(tmp_path / "input"), "--output",
                           str(tmp_path / "out"), "--ensemble", str(workspace.t1_spec), "--weights",
                           str(workspace.weights), "--device", "cpu", "--budget", "0"],
                          capture_output=True, text=True, timeout=300)
    return done, case


def test_an_allocation_that_fails_anyway_is_one_line(workspace, tmp_path):
    """The estimate lets the case through (switched off here), then an allocation fails under RLIMIT_DATA, as GC's
    shim sets it: one error line naming the case and the cause, exit 1, no traceback, no mask."""
    code = ("import sys\nimport panther_ensemble.app.predict_run as run\n"
            "run.check_host_memory = lambda *args, **kwargs: None\n"
            "used = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmData:')) * 1024\n"
            "import resource\nresource.setrlimit(resource.RLIMIT_DATA, (used + 160 * 2 ** 20, ) * 2)\n"
            "from panther_ensemble.cli import main\nsys.exit(main(sys.argv[1:]))")
    done, case = predict_in_a_child(workspace, tmp_path, (60, 300, 300), code)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {case}: out of memory"), lines[0]
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_the_first_case_imports_nothing(workspace, tmp_path):
    """Every module a case needs is imported before it (engine.members.import_case_code), where the room under
    RLIMIT_DATA is not yet the case's: imported mid-case (nnU-Net's class lookups, the architecture, torch's lazy
    sympy) it was a SystemError and an abort, 1 in 6 times, in the allocation test above."""
    import json

    code = ("import json, sys\nimport panther_ensemble.app.predict_run as run\nnew = []\n"
            "def case(*args, **kwargs):\n    before = set(sys.modules)\n"
            "    try:\n        return predict(*args, **kwargs)\n"
            "    finally:\n        new.extend(sorted(set(sys.modules) - before))\n"
            "predict, run.predict_case = run.predict_case, case\n"
            "from panther_ensemble.cli import main\ncode = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'new': new}))")
    done, _ = predict_in_a_child(workspace, tmp_path, (20, 60, 60), code)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "new": []}, done.stderr[-2000:]


def test_an_image_that_simpleitk_cannot_allocate_is_out_of_memory_not_unreadable(tmp_path):
    """SimpleITK's reader under RLIMIT_DATA: 'Failed to allocate memory for image' is the process's limit, not a
    broken file: one line saying out of memory and naming the file."""
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "case.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((100, 512, 512), np.int16)), str(path))
    code = ("import resource, sys\nfrom panther_ensemble.core.errors import CaseFailure, failure_line\n"
            "from panther_ensemble.engine.image import read_image\n"
            "used = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmData:')) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (used + 20 * 2 ** 20, ) * 2)\n"
            "try:\n    read_image(sys.argv[1])\nexcept Exception as e:\n"
            "    print(failure_line(CaseFailure.of(sys.argv[1], e)))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"{path}: out of memory") and "Failed to allocate memory" in line, line


def test_usable_cpus_are_the_cores_under_the_smallest_cgroup_quota(tmp_path):
    """Docker's --cpus 2.5 on a 64-core host: 3 CPUs (v2 cpu.max, v1 cpu.cfs_quota_us); an ancestor's quota (a Slurm
    job's, a systemd slice's) counts too; "max" and -1 are none; the cores it may run on cap it."""
    cores = set(range(64))
    root = tmp_path / "v2"
    cgroup(root / "job" / "task", {"cpu.max": "max 100000"})
    cgroup(root / "job", {"cpu.max": "250000 100000"})
    cgroup(root, {"cpu.max": "max 100000"})
    assert usable_cpus(root, proc_self(tmp_path, "0::/job/task\n"), cores) == 3
    (root / "job" / "task" / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(root, proc_self(tmp_path, "0::/job/task\n"), cores) == 1
    assert usable_cpus(root, proc_self(tmp_path, "0::/job/task\n"), {0}) == 1
    (root / "job" / "cpu.max").write_text("max 100000\n")
    (root / "job" / "task" / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(root, proc_self(tmp_path, "0::/job/task\n"), cores) == 64
    v1 = tmp_path / "v1"
    cgroup(v1 / "cpu", {"cpu.cfs_quota_us": "400000", "cpu.cfs_period_us": "100000"})
    docker = "4:cpu,cpuacct:/docker/0123abcd\n12:memory:/docker/0123abcd\n"
    assert usable_cpus(v1, proc_self(tmp_path, docker), cores) == 4
    assert usable_cpus(v1, proc_self(tmp_path, docker), {3, 7}) == 2
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus(v1, proc_self(tmp_path, docker), cores) == 64
    assert usable_cpus(tmp_path / "none", proc_self(tmp_path, ""), cores) == 64
    assert usable_cpus(v1, proc_self(tmp_path, docker)) == len(os.sched_getaffinity(0))


def test_cpu_threads_follow_the_quota_and_start_before_any_case(tmp_path):
    """torch's threads are capped at the usable CPUs (a quota of 1, as if the container had --cpus 1), never raised,
    left as OMP_NUM_THREADS says where it is set, and all started by the time the device is chosen: under GC's
    RLIMIT_DATA a thread started later, with the memory taken by a case, would end the process inside libgomp."""
    code = ("import os, sys, torch\nfrom panther_ensemble.engine import devices\n"
            "devices.usable_cpus = lambda: int(sys.argv[1])\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "devices.select_device('cpu')\n"
            "print(torch.get_num_threads(), len(os.listdir('/proc/self/task')) - before)")

    def threads(env: dict, usable: int) -> tuple[int, int]:
        environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
        done = subprocess.run([sys.executable, "-c", code, str(usable)], capture_output=True, text=True, timeout=120,
                              env=environment)
        assert done.returncode == 0, done.stderr
        return tuple(int(n) for n in done.stdout.split())

    count, started = threads({}, 1)
    assert count == 1 and started == 0  # one thread: the main one, no pool
    default, started = threads({}, 64)  # torch's own count (the physical cores here), not raised to 64
    assert 1 <= default <= len(os.sched_getaffinity(0)) and started >= default - 1  # the pool already running
    assert threads({"OMP_NUM_THREADS": "1"}, 64) == (1, 0)


def test_cpu_threads_fit_the_data_limit(tmp_path):
    """A 16-core machine's 16 threads under RLIMIT_DATA with 100 MB of room: 16 stacks of 8 MB would not fit, and
    libgomp would end the process (seen: 'libgomp: Thread creation failed'); as many as a quarter of the room holds
    run instead, and the process carries on."""
    code = ("import resource, sys, torch\nfrom panther_ensemble.engine import devices\n"
            "devices.usable_cpus = lambda: 16\ntorch.set_num_threads(16)\n"
            "resource.setrlimit(resource.RLIMIT_STACK, (8 * 2 ** 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))\n"
            "used = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmData:')) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (used + 100 * 2 ** 20, ) * 2)\n"
            "devices.select_device('cpu')\n"
            "print(torch.get_num_threads(), float(torch.ones(2 ** 20).sum()))")
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    threads, total = done.stdout.split()
    assert int(threads) == 3 and float(total) == 2 ** 20  # 100 MB / (4 x 8 MB)
