"""Grand Challenge's invoke API: the HTTP contract with stand-in predictions (in this process), and the real server
(`python inference.py --api invoke`) on the synthetic ensemble, as GC's shim drives it: health, tasks one after
another with fresh input and output folders, bad input, an empty input, a refusal at start-up.
The image under GC's own shim: test/gc_runtime_test.sh."""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gc_input, read_mask
from test_cli import OUTPUT_FOLDER, REPO, T1

import panther_ensemble.engine.loading as loading
from panther_ensemble.app import invoke_server
from panther_ensemble.app.loaded_ensembles import LoadedEnsembles, ServeOptions
from panther_ensemble.core.clock import now
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.spec import load_spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, timeout: float = 300) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (ConnectionError, OSError):
        return 0, ""
    finally:
        connection.close()


def wait_for(port: int, status: int, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while request(port, "GET", "/health", timeout=5)[0] != status:
        assert time.monotonic() < deadline, f"/health never answered {status}"
        assert process is None or process.poll() is None, f"the server ended: {process.returncode}"
        time.sleep(0.05)


# --- the HTTP contract, with stand-in predictions

@pytest.fixture()
def stand_in_server():
    """serve() with a load that waits for the test and a predict the test scripts; stopped after the test."""
    port, loaded, calls, stop = free_port(), threading.Event(), [], threading.Event()
    behaviour = {"predict": lambda started: calls.append(started) or ["mask"]}

    def load():
        loaded.wait(30)
        return lambda started: behaviour["predict"](started)

    thread = threading.Thread(target=invoke_server.serve, args=(load, "127.0.0.1", port, stop), daemon=True)
    thread.start()
    wait_for(port, 503, 10)
    yield port, loaded, behaviour, calls
    loaded.set()
    stop.set()
    thread.join(10)


def test_health_is_503_while_loading_then_200(stand_in_server):
    port, loaded, _, calls = stand_in_server
    wait_for(port, 503, 10)
    assert request(port, "POST", "/invoke")[0] == 503 and calls == []  # no task before the ensembles are loaded
    loaded.set()
    wait_for(port, 200, 10)
    assert request(port, "GET", "/health")[1] == "ready\n"
    assert request(port, "GET", "/nowhere")[0] == 404
    assert request(port, "POST", "/invoke") == (201, "1 mask(s) written\n") and len(calls) == 1


def test_a_second_invoke_while_one_runs_is_refused(stand_in_server):
    port, loaded, behaviour, _ = stand_in_server
    running, release = threading.Event(), threading.Event()

    def slow(started):
        running.set()
        release.wait(30)
        return ["mask"]

    behaviour["predict"] = slow
    loaded.set()
    wait_for(port, 200, 10)
    first = {}
    thread = threading.Thread(target=lambda: first.update(status=request(port, "POST", "/invoke")[0]))
    thread.start()
    assert running.wait(10)
    assert request(port, "POST", "/invoke")[0] == 409  # refused, not queued
    started = time.perf_counter()
    assert request(port, "GET", "/health")[0] == 200  # health answers while a task runs
    assert time.perf_counter() - started < 1
    release.set()
    thread.join(10)
    assert first["status"] == 201
    assert request(port, "POST", "/invoke")[0] == 201  # free again


@pytest.mark.parametrize("error, status, line", [
    (PantherError("/input/x.mha: cannot be read as an image"), 422, "error: /input/x.mha: cannot be read as an image"),
    (ValueError("boom\nsecond line"), 500, "error: unexpected ValueError: boom (set PANTHER_DEBUG=1"),
    (MemoryError(), 500, "error: out of memory: the case needs more memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 4000000000 bytes"), 500, "error: out of memory (DefaultCPUAllocator"),
], ids=["bad-input", "bug", "memory-error", "torch-allocation"])
def test_a_failed_task_is_one_line_and_the_server_goes_on(stand_in_server, capfd, error, status, line):
    port, loaded, behaviour, _ = stand_in_server
    loaded.set()
    wait_for(port, 200, 10)
    capfd.readouterr()

    def fail(started):
        raise error

    behaviour["predict"] = fail
    assert request(port, "POST", "/invoke")[0] == status
    stderr = capfd.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(line), stderr
    behaviour["predict"] = lambda started: ["mask"]
    assert request(port, "GET", "/health")[0] == 200 and request(port, "POST", "/invoke")[0] == 201


def test_a_failed_load_ends_the_server(capfd):
    port = free_port()

    def load():
        raise PantherError("spec.toml: missing required key 'tumor_label'")

    with pytest.raises(PantherError):
        invoke_server.serve(load, "127.0.0.1", port)
    assert request(port, "GET", "/health", timeout=2)[0] == 0  # closed: the port is free again
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_first_task_counts_from_the_jobs_start_a_later_one_from_its_call(workspace, tmp_path, monkeypatch):
    """GC's clock: the first task's budget counts from the job's start (loading and the wait for the call in it),
    a later task's from its own call; a second case of one task from its own start."""
    seen = []

    def predict_case(model, file, output_dir, timer, deadline):
        seen.append((deadline.start, deadline.seconds))
        return file, 0.0

    monkeypatch.setattr("panther_ensemble.app.loaded_ensembles.predict_case", predict_case)
    input_dir = gc_input(tmp_path, T1, {"a.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3), seed=1),
                                        "b.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3), seed=2)})
    job = now("the test's job")
    ensembles = LoadedEnsembles(ServeOptions(input_dir, tmp_path / "out", workspace.t1_spec, workspace.weights,
                                             "cpu", job=job))
    ensembles.load_at_start()
    ensembles.predict(time.perf_counter())
    assert seen[0] == (job.at, 270.0) and seen[1][0] > job.at  # the second case's budget is its own
    seen.clear()
    called = time.perf_counter()
    ensembles.predict(called)
    assert seen[0] == (called, 270.0) and ensembles.tasks == 2
    ensembles.loaded[T1].close()


class SlowNetwork(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.network, self.delay = network, delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.network(x)


def test_a_first_task_called_long_after_healthy_ends_within_the_jobs_budget(workspace, tmp_path, monkeypatch,
                                                                             capsys):
    """The shim polls /health every 10 s: the first /invoke may come 10 s after the server turned healthy. The
    task's budget counts from the job's start, so the mask is written within it, members dropped as needed, where
    an ensemble needs far longer."""
    original, loaded = loading.load_network, []

    def slow_network(member, device):
        network = SlowNetwork(original(member, device), 0.05 if not loaded else 1.0)
        loaded.append(network)
        return network

    monkeypatch.setattr(loading, "load_network", slow_network)
    budget, port, stop_serving = 16.0, free_port(), threading.Event()
    fresh_task(tmp_path / "gc", T1, {"case.mha": dict(shape_zyx=(16, 60, 70), spacing_xyz=(0.8, 0.8, 3.0), seed=5)})
    job = now("the test's job")
    options = ServeOptions(tmp_path / "gc" / "input", tmp_path / "gc" / "output", workspace.t1_spec,
                           workspace.weights, "cpu", budget, job=job)

    def load():
        ensembles = LoadedEnsembles(options)
        ensembles.load_at_start()
        return ensembles.predict

    server = threading.Thread(target=invoke_server.serve, args=(load, "127.0.0.1", port, stop_serving), daemon=True)
    server.start()
    try:
        wait_for(port, 200, 60)
        healthy = time.perf_counter()
        time.sleep(max(0.0, healthy + 10.0 - time.perf_counter()))  # the shim's next poll
        assert request(port, "POST", "/invoke")[0] == 201
        done = time.perf_counter()
    finally:
        stop_serving.set()
        server.join(10)
    log = capsys.readouterr().out
    assert done - job.at <= budget + 0.5, (done - job.at, log)
    assert "budget: dropped" in log and "summary case.mha: " in log
    line = next(line for line in log.splitlines() if line.startswith("task 1: "))
    assert "budget 16 s of the 300 s time limit, counted from the test's job (start-up and loading " in line
    waited = float(line.split("the wait for the call ")[1].split(" s")[0])
    assert 9.5 <= waited <= 11, line


# --- any caller: bodies, lengths, callers that go away, idle connections

def raw_exchange(port: int, data: bytes, close_after_send: bool = False, timeout: float = 10) -> bytes:
    """Send `data` on a fresh connection; what the server answers until it closes (b"" where it closes silently)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if close_after_send:
            return b""
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("length, status", [("abc", 400), ("-5", 400), ("1e3", 400), (str(2 * 2 ** 30), 413)],
                         ids=["not-a-count", "negative", "not-an-integer", "two-gigabytes"])
def test_a_bad_or_huge_content_length_is_refused_with_nothing_read(stand_in_server, capfd, length, status):
    port, loaded, _, calls = stand_in_server
    loaded.set()
    wait_for(port, 200, 10)
    capfd.readouterr()
    started = time.perf_counter()
    answer = raw_exchange(port, f"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in answer, answer
    assert time.perf_counter() - started < 2  # answered at once: the announced body is neither awaited nor read
    assert calls == [] and capfd.readouterr().err == ""
    assert request(port, "GET", "/health")[0] == 200


@pytest.mark.parametrize("data", [b"POST /invoke HTTP/1.1\r\nHost: x\r\n",  # gone mid-headers
                                  b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"],
                         ids=["mid-headers", "body-cut-short"])
def test_a_request_that_did_not_arrive_whole_is_never_a_task(stand_in_server, capfd, data):
    port, loaded, _, calls = stand_in_server
    loaded.set()
    wait_for(port, 200, 10)
    capfd.readouterr()
    raw_exchange(port, data, close_after_send=True)
    time.sleep(0.5)
    assert calls == [] and capfd.readouterr().err == ""
    assert request(port, "POST", "/invoke")[0] == 201 and len(calls) == 1  # the next whole one is


def test_a_caller_gone_before_its_task_begins_is_never_a_task(stand_in_server, capfd, monkeypatch):
    port, loaded, _, calls = stand_in_server
    loaded.set()
    wait_for(port, 200, 10)
    closed, original = threading.Event(), invoke_server._Handler._body_read

    def after_the_caller_closed(handler):  # the server reads the request, then finds its caller gone
        closed.wait(10)
        return original(handler)

    monkeypatch.setattr(invoke_server._Handler, "_body_read", after_the_caller_closed)
    capfd.readouterr()
    raw_exchange(port, b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", close_after_send=True)
    closed.set()
    time.sleep(0.5)
    assert calls == []
    captured = capfd.readouterr()
    assert captured.err == "" and "the caller went away before the task began" in captured.out


def test_a_caller_gone_during_its_task_does_not_stop_it(stand_in_server, capfd):
    port, loaded, behaviour, _ = stand_in_server
    running, closed, finished = threading.Event(), threading.Event(), []

    def task(started):
        running.set()
        closed.wait(10)
        time.sleep(0.2)
        finished.append(started)
        return ["mask"]

    behaviour["predict"] = task
    loaded.set()
    wait_for(port, 200, 10)
    capfd.readouterr()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert running.wait(10)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
    closed.set()
    deadline = time.monotonic() + 10
    while not finished and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(finished) == 1  # the task ran to its end
    captured = capfd.readouterr()
    assert captured.err == "", captured.err  # no traceback on GC's error channel
    assert request(port, "GET", "/health")[0] == 200


def test_idle_and_surplus_connections_are_bounded(monkeypatch, capfd):
    monkeypatch.setattr(invoke_server._Handler, "timeout", 2.0)
    monkeypatch.setattr(invoke_server, "MAX_CONNECTIONS", 2)
    servers = []  # the server serve() makes, to wait on its count of open connections (no fixed sleeps)

    class Watched(invoke_server.InvokeServer):
        def __init__(self, host: str, port: int) -> None:
            super().__init__(host, port)
            servers.append(self)

    monkeypatch.setattr(invoke_server, "InvokeServer", Watched)

    def open_connections_become(count: int) -> None:
        deadline = time.monotonic() + 10
        while servers[0].open_connections != count:
            assert time.monotonic() < deadline, f"{servers[0].open_connections} connections open, not {count}"
            time.sleep(0.01)

    port, stop_serving = free_port(), threading.Event()
    thread = threading.Thread(target=invoke_server.serve, args=(lambda: (lambda started: []), "127.0.0.1", port,
                                                                 stop_serving), daemon=True)
    thread.start()
    try:
        wait_for(port, 200, 10)
        open_connections_become(0)  # wait_for's own connections ended on the server's side too
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        idle[1].sendall(b"GET /health HTTP/1.1\r\nHost")  # half-sent
        open_connections_become(2)
        assert raw_exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        assert servers[0].open_connections == 2  # the refused one never had a thread
        for connection in idle:  # both closed by the server once idle for its timeout
            assert connection.recv(1) == b""
            connection.close()
        open_connections_become(0)
        assert request(port, "GET", "/health")[0] == 200
    finally:
        stop_serving.set()
        thread.join(10)
    assert capfd.readouterr().err == ""


# --- the real server on the synthetic ensemble

def app_folder(workspace, root: Path) -> Path:
    """An app folder like the image's /opt/app: ensemble/task1.toml and a Task 2 spec over the same folds."""
    app = root / "app"
    shutil.copytree(workspace.weights, app / "weights")
    (app / "ensemble").mkdir()
    text = workspace.t1_spec.read_text()
    (app / "ensemble" / "task1.toml").write_text(text)
    (app / "ensemble" / "task2.toml").write_text(text.replace(T1, "abdominal-t2-mri"))
    return app


def start_server(app: Path, folders: Path, port: int, *options: str, limit_data: int | None = None
                 ) -> subprocess.Popen:
    env = dict(os.environ, PANTHER_APP_DIR=str(app))

    def limits():
        if limit_data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit_data, limit_data))

    return subprocess.Popen([sys.executable, "inference.py", "--api", "invoke", "--port", str(port), "--input",
                             str(folders / "input"), "--output", str(folders / "output"), *options], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limits)


def fresh_task(folders: Path, socket_slug: str, images: dict[str, dict]) -> None:
    """What the shim does before each task: /input and /output emptied, the task's inputs downloaded."""
    for name in ("input", "output"):
        shutil.rmtree(folders / name, ignore_errors=True)
    (folders / "output").mkdir(parents=True)
    if images:
        gc_input(folders, socket_slug, images)
    else:
        (folders / "input").mkdir()


def stop(process: subprocess.Popen) -> tuple[str, str]:
    process.terminate()
    return process.communicate(timeout=30)


CASE = {"case.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(0.9, 0.9, 3.0), seed=21)}


def test_the_server_predicts_task_after_task(workspace, tmp_path):
    app, folders, port = app_folder(workspace, tmp_path), tmp_path / "gc", free_port()
    exec_output = tmp_path / "exec"
    fresh_task(folders, T1, CASE)
    shutil.copytree(folders / "input", tmp_path / "exec-input")
    exec_run = subprocess.run([sys.executable, "inference.py", "--input", str(tmp_path / "exec-input"), "--output",
                               str(exec_output)], cwd=REPO, env=dict(os.environ, PANTHER_APP_DIR=str(app)),
                              capture_output=True, text=True, timeout=300)
    assert exec_run.returncode == 0, exec_run.stderr
    spawned = time.monotonic()
    server = start_server(app, folders, port)
    try:
        first = None  # the port is bound before the heavy imports: /health answers (503) from the first second
        while first is None:
            first = request(port, "GET", "/health", timeout=5)[0] or None
            assert time.monotonic() - spawned < 10 and server.poll() is None
        assert first == 503 and time.monotonic() - spawned < 2, time.monotonic() - spawned
        wait_for(port, 200, 120, server)
        # a good case, while /health is asked every 50 ms: it answers within a second throughout
        latencies, done = [], threading.Event()

        def poll():
            while not done.is_set():
                started = time.perf_counter()
                assert request(port, "GET", "/health", timeout=5)[0] == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        assert request(port, "POST", "/invoke") == (201, "1 mask(s) written\n")
        done.set()
        poller.join()
        assert latencies and max(latencies) < 1.0, max(latencies)
        mask, _ = read_mask(folders / "output" / OUTPUT_FOLDER / "case.mha")
        np.testing.assert_array_equal(mask, read_mask(exec_output / OUTPUT_FOLDER / "case.mha")[0])  # = exec mode
        # a corrupt case, an empty input: an error status each, and the next good case predicts
        fresh_task(folders, T1, CASE)
        (folders / "input" / "images" / T1 / "case.mha").write_bytes(b"not an image")
        assert request(port, "POST", "/invoke")[0] == 422
        assert not any((folders / "output").rglob("*.mha"))
        # a bad image beside a good one: as in predict, the bad one's line, the good one's mask, the task 422
        fresh_task(folders, T1, {"bad.mha": CASE["case.mha"], **CASE})
        (folders / "input" / "images" / T1 / "bad.mha").write_bytes(b"not an image")
        assert request(port, "POST", "/invoke")[0] == 422
        assert [p.name for p in (folders / "output").rglob("*.mha")] == ["case.mha"]
        fresh_task(folders, T1, {})
        assert request(port, "POST", "/invoke")[0] == 422
        fresh_task(folders, "abdominal-t2-mri", CASE)
        assert request(port, "POST", "/invoke")[0] == 201  # the other task's ensemble, loaded at start-up too
        assert (folders / "output" / OUTPUT_FOLDER / "case.mha").is_file()
    finally:
        out, err = stop(server)
    lines = err.splitlines()  # GC shows stderr as warnings: only the three failures, one line each
    assert len(lines) == 3, err
    assert lines[0].startswith(f"error: {folders / 'input' / 'images' / T1 / 'case.mha'}: cannot be read as an image")
    assert lines[1].startswith(f"error: {folders / 'input' / 'images' / T1 / 'bad.mha'}: cannot be read as an image")
    assert lines[2].startswith(f"error: {folders / 'input'}: no input image found")
    assert out.count("loading 6 members") == 2 and "healthy " in out  # each ensemble loaded once


def test_a_socket_not_loaded_at_start_up_loads_with_its_first_task(workspace, tmp_path):
    app, folders, port = app_folder(workspace, tmp_path), tmp_path / "gc", free_port()
    server = start_server(app, folders, port, "--socket", T1)
    try:
        wait_for(port, 200, 120, server)
        fresh_task(folders, "abdominal-t2-mri", CASE)
        assert request(port, "POST", "/invoke")[0] == 201
        fresh_task(folders, "abdominal-t2-mri", CASE)
        assert request(port, "POST", "/invoke")[0] == 201
    finally:
        out, err = stop(server)
    assert err == ""
    assert out.count("not loaded at start-up; loading") == 1 and out.count("loading 6 members") == 2


def test_a_broken_checkpoint_is_refused_at_start_up(workspace, tmp_path):
    app, folders, port = app_folder(workspace, tmp_path), tmp_path / "gc", free_port()
    last = load_spec(app / "ensemble" / "task1.toml").members[-1]
    last.checkpoint_path(app / "weights").write_bytes(b"truncated")
    server = start_server(app, folders, port)
    out, err = server.communicate(timeout=120)
    assert server.returncode == 1 and "healthy " not in out
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "not a readable PyTorch checkpoint" in err


def _data_in_use_after_imports() -> int:
    """VmData of a Python that imported what the server imports before it loads (bytes)."""
    code = ("import panther_ensemble.app.loaded_ensembles, panther_ensemble.app.invoke_server\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmData:')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout) * 1024


def test_a_data_limit_below_what_the_networks_need_is_refused_at_start_up(workspace, tmp_path):
    """As GC's shim limits memory (RLIMIT_DATA): the imports fit, the networks and the run's fixed costs do not."""
    app, folders, port = app_folder(workspace, tmp_path), tmp_path / "gc", free_port()
    limit = _data_in_use_after_imports() + 120 * 2 ** 20
    server = start_server(app, folders, port, limit_data=limit)
    started = time.monotonic()
    out, err = server.communicate(timeout=120)
    assert server.returncode == 1 and "healthy " not in out and time.monotonic() - started < 60
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "its networks would need about" in err and "RLIMIT_DATA" in err, err


def test_cohort_options_are_refused_with_invoke():
    done = subprocess.run([sys.executable, "inference.py", "--api", "invoke", "--skip-existing"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--skip-existing: for exec only" in done.stderr
