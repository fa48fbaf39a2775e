"""Grand Challenge's invoke API (sagemaker-shim's API method "invoke"): an HTTP server that loads the ensembles
once and predicts what /input holds into /output per POST /invoke, task after task in one container.

- GET /health: 503 while the ensembles load, 200 once they are loaded (on CUDA, graphs captured); answered at any
  time, from the first fraction of a second (the port is bound before torch is imported).
- POST /invoke: 201 when the masks are written; 422 and one `error:` line on stderr for a problem with the input,
  500 and one line for anything else (the server stays healthy for the next task); 409 while another task runs (the
  shim sends one at a time: a second is refused, not queued); 503 before healthy. The case's budget counts from the
  call: loading happened before the first task.
- A problem while loading ends the server with one `error:` line and exit 1: the health check never turns 200 and
  the shim reports the reason from the log.

Stdlib only (http.server), see docs/architecture.md: two routes without request bodies, and a predict call that must
run beside a /health that still answers. stderr is GC's error channel: no access log is written there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..core.errors import CaseFailure, PantherError, print_failure
from ..core.log import log
from ..core.stop import on_stop

DEFAULT_HOST = "127.0.0.1"  # where the shim calls it (port: GRAND_CHALLENGE_COMPONENT_USER_WEBSERVER_PORT)
DEFAULT_PORT = 4743

Predict = Callable[[float], list]  # one task, its budget counted from the given perf_counter time; the masks written


class InvokeServer(ThreadingHTTPServer):
    daemon_threads = True  # a /health answered during a task never holds up the end

    def __init__(self, host: str, port: int) -> None:
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise PantherError(f"cannot serve on {host}:{port} ({e.strerror})") from None
        self.predict: Predict | None = None  # set once the ensembles are loaded: healthy from then on
        self.busy = threading.Lock()

    def invoke(self) -> tuple[HTTPStatus, str]:
        if self.predict is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, "loading"
        if not self.busy.acquire(blocking=False):
            log("invoke: refused (409), another task is running")
            return HTTPStatus.CONFLICT, "another task is running"
        started = time.perf_counter()
        try:
            with on_stop(lambda signal_name: None):  # stopped meanwhile: an error line, not a quiet end
                written = self.predict(started)
        except Exception as e:  # one line, and the server goes on to the next task
            print_failure(e)
            bad_input = isinstance(e, PantherError) and not isinstance(e, CaseFailure)
            return (HTTPStatus.UNPROCESSABLE_ENTITY if bad_input else HTTPStatus.INTERNAL_SERVER_ERROR), \
                "failed: see the log"
        finally:
            self.busy.release()
        log(f"invoke: {len(written)} mask(s) written in {time.perf_counter() - started:.1f}s (201)")
        return HTTPStatus.CREATED, f"{len(written)} mask(s) written"


class _Handler(BaseHTTPRequestHandler):
    server: InvokeServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            ready = self.server.predict is not None
            self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, "ready" if ready else "loading")
        else:
            self._reply(HTTPStatus.NOT_FOUND, "GET /health or POST /invoke")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # no body is expected; read any
        if self.path == "/invoke":
            self._reply(*self.server.invoke())
        else:
            self._reply(HTTPStatus.NOT_FOUND, "GET /health or POST /invoke")

    def _reply(self, status: HTTPStatus, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """No access log: stderr is for warnings and errors only."""


def serve(load: Callable[[], Predict], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          stop: threading.Event | None = None) -> None:
    """Answer /health at once, run `load` (the heavy imports and the ensembles), then serve tasks until `stop` is
    set or the process is stopped (the shim's SIGTERM at the end of the job). A problem in `load` raises, after the
    server is closed."""
    started = time.perf_counter()
    server = InvokeServer(host, port)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    try:
        log(f"invoke API on http://{host}:{port}: /health says 503 until the ensembles are loaded")
        server.predict = load()
        log(f"healthy {time.perf_counter() - started:.1f}s after start: POST /invoke predicts /input into /output")
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
