"""The image under Grand Challenge's own runtime: wrapped as GC wraps it, driven by GC's sagemaker-shim, inputs and
outputs through a local S3 (moto). Run by test/gc_runtime_test.sh, which builds the images and starts the S3.

The wrapping follows `_mutate_container_image` and `_get_shim_env_vars` (app/grandchallenge/components/tasks.py
of DIAGNijmegen/rse-grand-challenge): one layer appended with the shim at /sagemaker-shim (root, 0500) and the
folders /input (0755), /output and /tmp (0777), root-owned; USER 0; ENTRYPOINT /sagemaker-shim; the image's own
ENTRYPOINT, CMD and USER in GRAND_CHALLENGE_COMPONENT_ENTRYPOINT_B64J, _CMD_B64J and _USER. The shim is PyPI's
sagemaker-shim (the release GC runs) built as GC builds its binary, PyInstaller then staticx (test/gc_shim.sh): the
image's own Python plays no part in it. Each container gets the environment GC's executor gives a job
(`invocation_environment`): the memory of a 16 GB T4 instance less 1 GB as GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB,
a signing key, the API method from the image's label, the model tarball's S3 URI; and runs `invoke --tasks` (GC:
`invoke --file`), or `serve` where a test needs tasks one at a time. The container shares the host's network to
reach the S3 on 127.0.0.1; the product itself never uses a network (test/container_test.sh runs it without one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_masks import compare_masks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
API_LABEL = "org.grand-challenge.api-method"
T4_MAX_MEMORY_MB = (16 - 1) * 1024  # GC: ml.g4dn.xlarge's 16 GB less 1 GB for the system
INPUTS, OUTPUTS = "gc-inputs", "gc-outputs"
OUTPUT_SOCKET = "pancreatic-tumor-segmentation"
SHIM_SERVE_PORT = 8080  # `sagemaker-shim serve` listens there (SageMaker's)
TIMEOUT = "PT5M"  # PANTHER's limit per case


class Failed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


@dataclass(frozen=True)
class Case:
    task: str
    socket: str
    image: Path

    @property
    def expected(self) -> Path:
        return REPO / "test" / "expected_output" / self.task


def sample_cases() -> dict[str, Case]:
    cases = {}
    for inputs_json in sorted((REPO / "test" / "input").glob("*/inputs.json")):
        value = json.loads(inputs_json.read_text())[0]
        socket = value["socket"]["slug"]
        image = next((inputs_json.parent / value["socket"]["relative_path"]).glob("*.mha"))
        cases[inputs_json.parent.name] = Case(inputs_json.parent.name, socket, image)
    return cases


# --- the image wrapped as GC wraps it

SHIM_IMAGE = "panther-ensemble-gc-shim:0.8.3"  # test/gc_shim.sh: the static /sagemaker-shim, built as GC builds it


def image_config(tag: str) -> dict:
    return json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config}}", tag], check=True,
                                     capture_output=True, text=True).stdout)


def b64j(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def wrap(tag: str) -> str:
    """`tag` wrapped as GC wraps it, as `<tag>-gc`."""
    config = image_config(tag)
    wrapped = f"{tag}-gc"
    env = {"GRAND_CHALLENGE_COMPONENT_CMD_B64J": b64j(config.get("Cmd")),
           "GRAND_CHALLENGE_COMPONENT_ENTRYPOINT_B64J": b64j(config.get("Entrypoint")),
           "GRAND_CHALLENGE_COMPONENT_USER": config.get("User") or ""}
    dockerfile = f"""
FROM {tag}
USER root
COPY --from={SHIM_IMAGE} /sagemaker-shim /sagemaker-shim
RUN chown 0:0 /sagemaker-shim && chmod 0500 /sagemaker-shim \\
 && mkdir -p /input /output /tmp && chown 0:0 /input /output /tmp && chmod 0755 /input && chmod 0777 /output /tmp
USER 0
{chr(10).join(f'ENV {k}="{v}"' for k, v in env.items())}
ENTRYPOINT ["/sagemaker-shim"]
CMD []
"""
    built = subprocess.run(["docker", "build", "-q", "-t", wrapped, "-"], input=dockerfile, capture_output=True,
                           text=True)
    check(built.returncode == 0, f"wrapping {tag}: {built.stderr[-2000:]}")
    return wrapped


# --- the local S3 and GC's tasks

class S3:
    def __init__(self, endpoint: str) -> None:
        import boto3  # here, not at the top: --help answers where the test tools are not installed (the image)

        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in (INPUTS, OUTPUTS):
            self.client.create_bucket(Bucket=bucket)

    def put(self, key: str, body: bytes, bucket: str = INPUTS) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def keys(self, prefix: str, bucket: str = OUTPUTS) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def get(self, key: str, bucket: str = OUTPUTS) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def result(self, task: dict, container: Container | None = None) -> dict:
        try:
            return json.loads(self.get(f"{task['output_prefix']}.sagemaker_shim/inference_result.json"))
        except self.client.exceptions.NoSuchKey:
            raise Failed(f"{task['pk']}: no inference_result.json (the task never ran)" +
                         (f"; the container's log:\n{container.tail()}" if container else "")) from None


def gc_inputs_json(socket: str, image_name: str, keys: tuple[str, ...]) -> bytes:
    """inputs.json as GC's ComponentInterfaceValueSerializer writes it (the product's demo helper writes the same)."""
    from panther_ensemble.demo.synthetic import gc_image_value

    return json.dumps([gc_image_value(socket, image_name, keys)], indent=2).encode()


def make_task(s3: S3, pk: str, socket: str, image: Path | None, keys: tuple[str, ...] = ("socket", "interface"),
              image_bytes: bytes | None = None) -> dict:
    """A task as GC sends it: each input file in S3 with the relative path it gets under /input."""
    inputs = []
    if image is not None:
        relative = f"images/{socket}/{image.name}"
        s3.put(f"{pk}/{relative}", image_bytes if image_bytes is not None else image.read_bytes())
        s3.put(f"{pk}/inputs.json", gc_inputs_json(socket, image.name, keys))
        inputs = [{"relative_path": "inputs.json", "bucket_name": INPUTS, "bucket_key": f"{pk}/inputs.json"},
                  {"relative_path": relative, "bucket_name": INPUTS, "bucket_key": f"{pk}/{relative}"}]
    return {"pk": pk, "inputs": inputs, "output_bucket_name": OUTPUTS, "output_prefix": f"{pk}/", "timeout": TIMEOUT}


# --- running a wrapped image

@dataclass
class Container:
    """A wrapped image's run, its log lines (the shim's JSON) kept with the second they arrived."""

    name: str
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)  # the same moment on the wall clock
    lines: list[tuple[float, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, stream) -> None:
        for raw in stream:
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                entry = {"log": raw.rstrip("\n"), "internal": True, "level": "RAW", "task": None}
            with self.lock:
                self.lines.append((time.monotonic() - self.started, entry))

    def wait(self, timeout: float = 900) -> int:
        return self.process.wait(timeout)

    def ours(self, task: str | None = None) -> list[str]:
        """The product's own lines (stdout and stderr), for one task or all."""
        with self.lock:
            return [e["log"] for _, e in self.lines if not e.get("internal", True) and e.get("level") in
                    ("INFO", "WARNING") and (task is None or e.get("task") == task)]

    def our_stderr(self) -> list[str]:
        with self.lock:
            return [e["log"] for _, e in self.lines if not e.get("internal", True) and e.get("level") == "WARNING"]

    def when(self, pattern: str) -> float | None:
        with self.lock:
            return next((t for t, e in self.lines if re.search(pattern, e.get("log", ""))), None)

    def start_time(self, timeout: float = 60) -> float:
        """When Docker started the container (State.StartedAt), on this host's wall clock (time.time())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", self.name], capture_output=True,
                                  text=True)
            stamp = done.stdout.strip()
            if done.returncode == 0 and not stamp.startswith("0001-"):
                whole, _, fraction = stamp.rstrip("Z").partition(".")
                return datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp() \
                    + float(f"0.{fraction or 0}")
            time.sleep(0.05)
        raise Failed(f"{self.name}: Docker never said when it started")

    def tail(self, count: int = 40) -> str:
        with self.lock:
            return "\n".join(f"{t:7.1f}s {e.get('level', '')[:4]} {'   ' if e.get('internal', True) else 'ALG'} "
                             f"{e.get('log', '')}" for t, e in self.lines[-count:])


class Runtime:
    def __init__(self, endpoint: str, s3: S3) -> None:
        self.endpoint, self.s3 = endpoint, s3
        self.gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True).returncode == 0
        self.runs = 0

    def start(self, wrapped: str, api: str, args: list[str], max_memory_mb: int = T4_MAX_MEMORY_MB,
              model: str | None = None, extra_env: dict | None = None) -> Container:
        """`docker run` of a wrapped image with the environment GC's executor gives a job."""
        self.runs += 1
        name = f"panther-gc-runtime-{os.getpid()}-{self.runs}"
        env = {"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "no_proxy": "amazonaws.com",
               "GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB": str(max_memory_mb),
               "GRAND_CHALLENGE_COMPONENT_SIGNING_KEY_HEX": secrets.token_hex(32),
               "GRAND_CHALLENGE_COMPONENT_API_METHOD": api,
               "GRAND_CHALLENGE_COMPONENT_RUNTIME_OUTPUT_BUCKET_NAME": OUTPUTS,
               "GRAND_CHALLENGE_COMPONENT_RUNTIME_OUTPUT_PREFIX": f"runtime-{name}/",
               "AWS_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        if model:
            env["GRAND_CHALLENGE_COMPONENT_MODEL"] = model
        if not self.gpu:  # the base image says all GPUs are meant: without one the product warns on every task
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
        env.update(extra_env or {})
        command = ["docker", "run", "--rm", "--name", name, "--network", "host", "--memory", "16g",
                   "--cpus", str(min(4, os.cpu_count() or 1)), *(["--gpus", "all"] if self.gpu else [])]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        process = subprocess.Popen([*command, wrapped, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        container = Container(name, process)
        for stream in (process.stdout, process.stderr):
            threading.Thread(target=container.read, args=(stream,), daemon=True).start()
        return container

    def run_tasks(self, wrapped: str, api: str, tasks: list[dict], **options) -> Container:
        container = self.start(wrapped, api, ["invoke", "--tasks", json.dumps(tasks)], **options)
        code = container.wait()
        time.sleep(0.2)  # the readers' last lines
        check(code == 0, f"the shim exited {code}:\n{container.tail()}")
        return container

    def runtime_setup(self, container: Container) -> dict:
        return json.loads(self.s3.get(f"runtime-{container.name}/.sagemaker_shim/runtime_setup_result.json"))

    def mask_matches(self, task: dict, case: Case) -> None:
        """The task's only output is the expected mask, written under the input's name."""
        prefix = task["output_prefix"]
        keys = [k for k in self.s3.keys(prefix) if "/.sagemaker_shim/" not in k]
        check(keys == [f"{prefix}images/{OUTPUT_SOCKET}/{case.image.name}"],
              f"{task['pk']}: outputs {keys}, expected only images/{OUTPUT_SOCKET}/{case.image.name}")
        with tempfile.TemporaryDirectory() as out:
            target = Path(out) / "images" / OUTPUT_SOCKET / case.image.name
            target.parent.mkdir(parents=True)
            target.write_bytes(self.s3.get(keys[0]))
            check(compare_masks(case.expected, Path(out), OUTPUT_SOCKET), f"{task['pk']}: the mask differs")


def seconds(duration: str | None) -> float:
    """pydantic's ISO 8601 duration (PT12.345S) in seconds."""
    match = re.fullmatch(r"P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", duration or "")
    check(match is not None, f"not a duration: {duration!r}")
    hours, minutes, secs = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def succeeded(runtime: Runtime, task: dict, case: Case, container: Container) -> dict:
    result = runtime.s3.result(task, container)
    check(result["return_code"] == 0, f"{task['pk']}: return code {result['return_code']}: "
                                      f"{result['user_safe_error_message']} {result['user_process_last_stderr_lines']}")
    runtime.mask_matches(task, case)
    return result


def one_error_line(lines: list[str], what: str, expected: str) -> str:
    """Exactly one line of the algorithm's stderr, `error: ...` containing `expected`, and no traceback."""
    lines = [line.rstrip("\n") for line in lines if line.strip()]
    check(len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0],
          f"{what}: expected one 'error: ...{expected}...' line on stderr, got {lines}")
    return lines[0]


def memory_line(container: Container) -> tuple[float, str]:
    """The room of the smallest memory limit the product saw (its 'host memory' line), in MiB, and that line."""
    line = next((line for line in container.ours() if line.startswith("host memory: ")), None)
    check(line is not None and "RLIMIT_DATA" in line, f"no 'host memory' line naming RLIMIT_DATA: {line}")
    return float(re.search(r"([\d.]+) GiB available", line).group(1)) * 1024, line


def large_case(folder: Path) -> Path:
    """A 512 x 512 x 200 image at 0.7 x 0.7 x 1.5 mm, int16 noise (a scanner: nowhere 0)."""
    noise = np.random.default_rng(0).integers(1, 900, (200, 512, 512), dtype=np.int16)
    image = sitk.GetImageFromArray(noise)
    image.SetSpacing((0.7, 0.7, 1.5))
    path = folder / "large.mha"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def http(method: str, url: str, body: dict | None = None, timeout: float = 600) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def kill_algorithm(container: Container) -> None:
    """SIGKILL to the product's process inside the container (the shim runs as root there)."""
    code = ("import os, signal\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        argv = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
            "        if b'inference.py' in argv: os.kill(int(p), signal.SIGKILL)\n"
            "    except OSError: pass\n")
    subprocess.run(["docker", "exec", container.name, "python", "-c", code], check=True)


# --- the scenarios

def exec_mode(runtime: Runtime, images: dict[str, str], cases: dict[str, Case], work: Path, numbers: dict) -> None:
    s3 = runtime.s3
    t1, t2 = cases["task1"], cases["task2"]
    print("== exec: both sample cases and a corrupt one as three tasks to one container (16 GB T4 memory)")
    tasks = [make_task(s3, "exec-task1", t1.socket, t1.image, ("socket", "interface")),
             make_task(s3, "exec-task2", t2.socket, t2.image, ("socket",)),
             make_task(s3, "exec-bad", t1.socket, t1.image, image_bytes=b"not an image")]
    started = time.monotonic()
    container = runtime.run_tasks(images["exec"], "exec", tasks)
    wall = time.monotonic() - started
    durations = []
    for task, case in zip(tasks[:2], (t1, t2)):
        result = succeeded(runtime, task, case, container)
        durations.append(seconds(result["exec_duration"]))
        print(f"   {task['pk']}: return code 0, exec_duration {durations[-1]:.1f} s, inputs.json with "
              f"{'socket and interface' if task is tasks[0] else 'socket alone'}")
    bad = s3.result(tasks[2])
    check(bad["return_code"] == 1, f"exec-bad: return code {bad['return_code']}")
    line = one_error_line(bad["user_process_last_stderr_lines"], "exec-bad", "cannot be read as an image")
    check(not any("Traceback" in x for x in container.ours()), "a traceback in the log")
    check([k for k in s3.keys("exec-bad/") if "/.sagemaker_shim/" not in k] == [], "exec-bad: outputs uploaded")
    print(f"   exec-bad: return code 1, the result's stderr lines: [{line!r}], nothing uploaded")
    room, memory = memory_line(container)
    print(f"   the product saw: {memory}")
    numbers["exec"] = {"durations": durations, "wall": wall, "room_mib": room}

    print("== exec: the weightless image with the export's model tarball as GRAND_CHALLENGE_COMPONENT_MODEL")
    task = make_task(s3, "exec-tarball", t1.socket, t1.image)
    container = runtime.run_tasks(images["exec-no-weights"], "exec", [task], model="s3://gc-inputs/model-task1.tar.gz")
    succeeded(runtime, task, t1, container)
    log = "\n".join(container.ours())
    check("/opt/ml/model/task1.toml" in log and "members (torch) of Dataset901_PantherT1 from /opt/ml/model" in log,
          "the spec and members were not taken from /opt/ml/model")
    print("   return code 0; spec and members from /opt/ml/model (the tarball the shim extracted)")

    used = T4_MAX_MEMORY_MB - room
    limit = int(used + 1024)
    print(f"== exec: a 512 x 512 x 200 case under GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB={limit} (the product "
          f"used {used:.0f} MiB of its data limit before the case)")
    large = large_case(work)
    task = make_task(s3, "exec-large-small-limit", t1.socket, large)
    runtime.run_tasks(images["exec"], "exec", [task], max_memory_mb=limit)
    result = s3.result(task)
    check(result["return_code"] == 1, f"{task['pk']}: return code {result['return_code']}")
    line = one_error_line(result["user_process_last_stderr_lines"], task["pk"], "RLIMIT_DATA")
    check(seconds(result["exec_duration"]) < 30, f"{task['pk']}: refused only after {result['exec_duration']}")
    print(f"   return code 1 in {seconds(result['exec_duration']):.1f} s: {line}")
    numbers["refused_large_s"] = seconds(result["exec_duration"])


def invoke_mode(runtime: Runtime, images: dict[str, str], tag: str, cases: dict[str, Case], work: Path,
                numbers: dict) -> None:
    s3 = runtime.s3
    t1, t2 = cases["task1"], cases["task2"]
    print("== invoke: both sample cases as two tasks to one container (the server loads both ensembles once)")
    tasks = [make_task(s3, "invoke-task1", t1.socket, t1.image, ("socket",)),
             make_task(s3, "invoke-task2", t2.socket, t2.image, ("socket", "interface"))]
    started = time.monotonic()
    container = runtime.run_tasks(images["invoke"], "invoke", tasks)
    wall = time.monotonic() - started
    durations = []
    for task, case in zip(tasks, (t1, t2)):
        result = succeeded(runtime, task, case, container)
        check(result["exec_duration"] is None, "an invoke task has no exec_duration")
        durations.append(seconds(result["invoke_duration"]))
        print(f"   {task['pk']}: return code 0, invoke_duration {durations[-1]:.1f} s")
    check(container.our_stderr() == [], f"the product wrote to stderr: {container.our_stderr()}")
    setup, healthy = container.when("Setting up user process for invoke mode"), container.when("User process is "
                                                                                                 "healthy")
    ours = container.when(r"^healthy [\d.]+s after start")
    check(None not in (setup, healthy, ours), f"no health in the log:\n{container.tail()}")
    print(f"   start-up to healthy: {healthy - setup:.1f} s as the shim saw it (it polls /health every 10 s), "
          f"{ours - setup:.1f} s by the server's own line")
    first_201 = container.when(r"^invoke: \d+ mask\(s\) written")
    task_line = next((line for line in container.ours() if line.startswith("task 1: budget ")), "")
    left = [float(m) for m in re.findall(r"budget left (-?[\d.]+)s of 270s", "\n".join(container.ours()))]
    check("counted from GC's runtime's start (sagemaker-shim" in task_line and len(left) == 2,
          f"the tasks' deadlines are not on GC's clock: {task_line!r}, budget left {left}")
    print(f"   {task_line}\n   first 201 {first_201 - setup:.1f} s after the shim set up the server; budget left "
          f"when each mask was written: {left[0]:.1f} s and {left[1]:.1f} s of 270 s")
    room, _ = memory_line(container)
    numbers["invoke"] = {"durations": durations, "wall": wall, "healthy_s": healthy - setup,
                         "own_healthy_s": ours - setup, "room_mib": room, "first_201_s": first_201 - setup,
                         "left_s": left}

    print("== invoke: the weightless image with Task 2's model tarball: only its ensemble loads")
    task = make_task(s3, "invoke-tarball", t2.socket, t2.image)
    container = runtime.run_tasks(images["invoke-no-weights"], "invoke", [task],
                                  model="s3://gc-inputs/model-task2.tar.gz")
    succeeded(runtime, task, t2, container)
    log = "\n".join(container.ours())
    check("abdominal-t2-mri: 2 member(s) of /opt/ml/model/task2.toml ready" in log
          and "abdominal-t1-mri" not in log.split("healthy")[0], f"not only Task 2's tarball loaded:\n{log}")
    print("   return code 0; loaded at start-up: /opt/ml/model/task2.toml only")

    first_task_on_gcs_clock(runtime, images, tag, t1, work)

    used = T4_MAX_MEMORY_MB - room
    limit = int(used + 100)
    print(f"== invoke: GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB={limit}, below what the loaded networks need (the "
          f"server used {used:.0f} MiB before loading)")
    task = make_task(s3, "invoke-small-limit", t1.socket, t1.image)
    container = runtime.run_tasks(images["invoke"], "invoke", [task], max_memory_mb=limit, extra_env={
        # GC's defaults are 300 s and 10 s: shorter here, not to wait five minutes for a health check never passed
        "GRAND_CHALLENGE_COMPONENT_START_AND_HEALTH_TIMEOUT_SECONDS": "30",
        "GRAND_CHALLENGE_COMPONENT_HEALTH_CHECK_CALL_TIMEOUT_SECONDS": "3"})
    setup = runtime.runtime_setup(container)
    task_keys = s3.keys("invoke-small-limit/")
    line = one_error_line(container.our_stderr(), "invoke-small-limit", "RLIMIT_DATA")
    check(container.when(r"^healthy [\d.]+s after start") is None, "the server said it was healthy")
    if setup["return_code"] == 1:
        how = f"the shim's start-up failed: {setup['user_safe_error_message'][:90]}..."
        check(task_keys == [], f"the task ran: {task_keys}")
    else:  # the shim ends its health polls just before its own timeout, then calls /invoke in vain
        result = s3.result(task)
        check(result["return_code"] == 1 and [k for k in task_keys if "/.sagemaker_shim/" not in k] == [],
              f"the task did not fail cleanly: {result}")
        how = f"the task failed: {result['user_safe_error_message']}"
    print(f"   health never 200; {how}\n   the server's one line: {line}")


TIGHT_BUDGET = 30.0  # s: the shim's first health poll after loading comes about 10 s in; 30 s for the case
# the sample case's field of view, in-plane, times this (mirrored at the same spacing): about 3.2 times its
# model-grid voxels, so Task 1's five members need about 40 s of forwards here and the first about 8 s. A finer
# resolution would not do: the members resample to their own spacing (at 2 and 4 times the in-plane resolution all
# five fitted in 30 s at times, whatever the shim's health poll left).
TIGHT_FIELD_OF_VIEW = 1.8


def first_task_on_gcs_clock(runtime: Runtime, images: dict[str, str], tag: str, case: Case, work: Path) -> None:
    """The first task's mask is written within the budget counted from the container's start, where the ensemble
    needs far longer: Task 1's five members on the sample case grown to TIGHT_FIELD_OF_VIEW times its extent,
    budget_seconds = TIGHT_BUDGET in the model tarball's spec, the shim's own 10 s health polls."""
    spec = work / "task1.toml"
    spec.write_text(f"budget_seconds = {TIGHT_BUDGET:g}\n" + (REPO / "ensemble" / "task1.toml").read_text())
    exported = subprocess.run([str(REPO / "export.sh"), "--tag", tag, "--models-only", "--ensemble", str(spec),
                               "--out", str(work)], capture_output=True, text=True)  # the image's own export
    check(exported.returncode == 0, f"export.sh: {exported.stderr[-2000:]}")
    runtime.s3.put("model-tight.tar.gz", (work / "model-task1.tar.gz").read_bytes())
    image = sitk.ReadImage(str(case.image))
    voxels = sitk.GetArrayFromImage(image)  # z, y, x
    grown = [(0, 0)] + [(0, int(n * (TIGHT_FIELD_OF_VIEW - 1))) for n in voxels.shape[1:]]
    larger = sitk.GetImageFromArray(np.pad(voxels, grown, mode="symmetric"))
    larger.SetSpacing(image.GetSpacing())
    larger.SetOrigin(image.GetOrigin())
    larger.SetDirection(image.GetDirection())
    size = list(larger.GetSize())
    path = work / case.image.name
    sitk.WriteImage(larger, str(path), useCompression=True)
    print(f"== invoke: the first task on GC's clock: budget_seconds = {TIGHT_BUDGET:g} in the model tarball's spec, "
          f"Task 1's case at {' x '.join(map(str, size))} voxels")
    task = make_task(runtime.s3, "invoke-clock", case.socket, path)
    container = runtime.start(images["invoke-no-weights"], "invoke", ["invoke", "--tasks", json.dumps([task])],
                              model="s3://gc-inputs/model-tight.tar.gz")
    container_started = container.start_time()
    code = container.wait()
    time.sleep(0.2)
    check(code == 0, f"the shim exited {code}:\n{container.tail()}")
    result = runtime.s3.result(task, container)
    check(result["return_code"] == 0, f"invoke-clock: {result}")
    log = container.ours()
    written = container.when(r"^wrote .*\.mha: tumor ")
    check(written is not None, f"invoke-clock: no mask written:\n{container.tail()}")
    after_start = container.started_wall + written - container_started
    summary = next(line for line in log if line.startswith("summary "))
    task_line = next((line for line in log if line.startswith("task 1: budget ")), "")
    check("counted from GC's runtime's start (sagemaker-shim" in task_line, f"not on GC's clock: {task_line!r}")
    check("dropped" in summary and " 0 dropped" not in summary, f"the budget dropped no member: {summary}")
    check(after_start <= TIGHT_BUDGET + 1.0, f"the mask came {after_start:.1f} s after the container's start, past "
                                             f"the {TIGHT_BUDGET:g} s budget:\n{container.tail()}")
    print(f"   {task_line}\n   the mask written {after_start:.1f} s after the container's start (budget "
          f"{TIGHT_BUDGET:g} s); {summary.split(': ', 1)[1].split(' (')[0]}")


def invoke_one_at_a_time(runtime: Runtime, images: dict[str, str], cases: dict[str, Case]) -> None:
    """`sagemaker-shim serve` (SageMaker's /invocations): tasks one at a time to one server, so that a failed task
    can be followed by another (`invoke --tasks` stops at the first failure)."""
    s3 = runtime.s3
    t1, t2 = cases["task1"], cases["task2"]
    check(http("GET", f"http://127.0.0.1:{SHIM_SERVE_PORT}/ping")[0] == 0,
          f"port {SHIM_SERVE_PORT} is taken on this host (the shim's serve mode listens there)")
    print("== invoke, tasks one at a time (sagemaker-shim serve): a bad case, an empty input, a good case, a kill")
    container = runtime.start(images["invoke"], "invoke", ["serve"])
    try:
        deadline = time.monotonic() + 300
        while http("GET", f"http://127.0.0.1:{SHIM_SERVE_PORT}/ping")[0] != 200:
            check(time.monotonic() < deadline and container.process.poll() is None,
                  f"the shim never became ready:\n{container.tail()}")
            time.sleep(1)

        def invocation(task: dict) -> dict:
            status, body = http("POST", f"http://127.0.0.1:{SHIM_SERVE_PORT}/invocations", task)
            check(status == 200, f"{task['pk']}: /invocations answered {status}: {body[:300]!r}")
            return json.loads(body)

        stderr_before = 0
        for task, expected in ((make_task(s3, "serve-bad", t1.socket, t1.image, image_bytes=b"\0" * 64),
                                "cannot be read as an image"),
                               (make_task(s3, "serve-empty", t1.socket, None), "no input image found")):
            result = invocation(task)
            new = result["user_process_last_stderr_lines"][stderr_before:]
            stderr_before = len(result["user_process_last_stderr_lines"])
            check(result["return_code"] == 1, f"{task['pk']}: return code {result['return_code']}")
            print(f"   {task['pk']}: return code 1, {one_error_line(new, task['pk'], expected)}")
        task = make_task(s3, "serve-good", t2.socket, t2.image)
        result = invocation(task)
        check(result["return_code"] == 0, f"serve-good: {result}")
        runtime.mask_matches(task, t2)
        print(f"   serve-good: return code 0 after the two failures, invoke_duration "
              f"{seconds(result['invoke_duration']):.1f} s; the mask as expected")

        task = make_task(s3, "serve-killed", t1.socket, t1.image)
        outcome = {}
        sender = threading.Thread(target=lambda: outcome.update(invocation(task)))
        sender.start()
        deadline = time.monotonic() + 120
        while not any("preprocessed" in line for line in container.ours("serve-killed")):
            check(time.monotonic() < deadline, f"serve-killed never started predicting:\n{container.tail()}")
            time.sleep(0.1)
        kill_algorithm(container)
        sender.join(120)
        check(outcome.get("return_code") == 1, f"serve-killed: {outcome}")
        uploaded = [k for k in s3.keys("serve-killed/") if "/.sagemaker_shim/" not in k]
        check(uploaded == [], f"serve-killed: outputs uploaded: {uploaded}")
        print(f"   serve-killed: the server killed mid-task: return code 1 "
              f"({outcome['user_safe_error_message']}), nothing uploaded")
    finally:
        subprocess.run(["docker", "stop", "-t", "10", container.name], capture_output=True)
        container.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="the exec image's tag (TAG-invoke, TAG-no-weights, ... too)")
    parser.add_argument("--s3", required=True, help="the local S3's endpoint URL")
    parser.add_argument("--export", type=Path, required=True, help="folder with model-<task>.tar.gz")
    parser.add_argument("--only", choices=("exec", "invoke", "serve"), action="append",
                        help="run only these scenario groups (for debugging; the test runs all)")
    args = parser.parse_args()
    only = set(args.only or ("exec", "invoke", "serve"))
    started = time.monotonic()
    cases = sample_cases()
    check(set(cases) == {"task1", "task2"}, f"sample cases: {sorted(cases)}")
    runtime = Runtime(args.s3, S3(args.s3))
    for task in ("task1", "task2"):
        runtime.s3.put(f"model-{task}.tar.gz", (args.export / f"model-{task}.tar.gz").read_bytes())
    no_weights = f"{args.tag}-no-weights"
    tags = {"exec": args.tag, "invoke": f"{args.tag}-invoke", "exec-no-weights": no_weights,
            "invoke-no-weights": f"{no_weights}-invoke"}
    images = {}
    print(f"== wrapping the images as GC wraps them ({SHIM_IMAGE}'s static /sagemaker-shim, USER 0, ...)")
    for kind, tag in tags.items():
        label = image_config(tag).get("Labels", {}).get(API_LABEL)
        check(label == kind.split("-")[0], f"{tag}: label {API_LABEL}={label!r}")
        images[kind] = wrap(tag)
        print(f"   {images[kind]}: {API_LABEL}={label}")
    numbers: dict = {}
    if "exec" in only:
        with tempfile.TemporaryDirectory(prefix="panther-gc-runtime-") as work:
            exec_mode(runtime, images, cases, Path(work), numbers)
    if "invoke" in only:
        with tempfile.TemporaryDirectory(prefix="panther-gc-runtime-") as work:
            invoke_mode(runtime, images, args.tag, cases, Path(work), numbers)
    if "serve" in only:
        invoke_one_at_a_time(runtime, images, cases)
    if not {"exec", "invoke"} <= only:
        return 0
    e, i = numbers["exec"], numbers["invoke"]
    print("== measured: the two sample cases as two tasks to one container (CPU here; GC runs a T4)")
    print(f"   exec:   task 1 {e['durations'][0]:.1f} s, task 2 {e['durations'][1]:.1f} s (exec_duration: each "
          f"pays start-up, imports and loading); container {e['wall']:.1f} s in all (with the third, bad task)")
    print(f"   invoke: task 1 {i['durations'][0]:.1f} s, task 2 {i['durations'][1]:.1f} s (invoke_duration); "
          f"healthy {i['healthy_s']:.1f} s after the shim started the server ({i['own_healthy_s']:.1f} s by its "
          f"own line); container {i['wall']:.1f} s in all")
    print(f"   the second task no longer pays {e['durations'][1] - i['durations'][1]:.1f} s of start-up, imports "
          "and loading (exec minus invoke)")
    print(f"   invoke, on GC's clock from the shim's setting up the server: healthy {i['own_healthy_s']:.1f} s, first "
          f"201 {i['first_201_s']:.1f} s; budget left when the masks were written: {i['left_s'][0]:.1f} and "
          f"{i['left_s'][1]:.1f} s of 270 s")
    print(f"== GC runtime test passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        print(f"gc_runtime: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
