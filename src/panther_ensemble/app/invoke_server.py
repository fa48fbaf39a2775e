"""Grand Challenge's invoke API (sagemaker-shim's API method "invoke"): an HTTP server that loads the ensembles
once and predicts what the input folder holds into the output folder per POST /invoke, task after task in one
container.

- GET /health: 503 while the ensembles load, 200 once they are loaded (on CUDA, graphs captured); answered at any
  time, from the first fraction of a second (the port is bound before torch is imported).
- POST /invoke: 201 when the masks are written; 422 and one `error:` line on stderr for a problem with the input,
  500 and one line for anything else (the server stays healthy for the next task); 409 while another task runs (the
  shim sends one at a time: a second is refused, not queued); 503 before healthy. The task's budget counts on GC's
  clock (engine.deadline.TaskClock): for the first task from the job's start, loading and the wait included.
- A problem while loading ends the server with one `error:` line and exit 1: the health check never turns 200 and
  the shim reports the reason from the log.
- Any caller: no request has a body, so at most MAX_BODY_BYTES of one are read and none is kept (a Content-Length
  that is no count is 400, one above the cap 413, nothing read); a request that did not arrive whole, or whose
  client has gone by the time it would start, is never a task; a client gone during a task does not stop it (the
  masks are written); idle or half-sent connections end after IDLE_SECONDS, at most MAX_CONNECTIONS at once.

Stdlib only (http.server), see docs/architecture.md: two routes without request bodies, and a predict call that must
run beside a /health that still answers. stderr is GC's error channel: no access log is written there, and a
caller's misbehaviour is a line on stdout at most.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..core.errors import AlreadyReported, CaseFailure, PantherError, print_failure
from ..core.log import log
from ..core.stop import on_stop

DEFAULT_HOST = "127.0.0.1"  # where the shim calls it (port: GRAND_CHALLENGE_COMPONENT_USER_WEBSERVER_PORT)
DEFAULT_PORT = 4743
MAX_BODY_BYTES = 64 * 1024  # no route takes a body; the shim's POST sends none
# A connection that sends nothing for this long is closed: well above the shim's 10 s between health checks on one
# kept-alive connection, far below GC's time limit
IDLE_SECONDS = 30.0
MAX_CONNECTIONS = 32  # beyond it a connection is answered 503 at once, without a thread

Predict = Callable[[float], list]  # one task, called at the given perf_counter time; the masks written


class InvokeServer(ThreadingHTTPServer):
    daemon_threads = True  # a /health answered during a task never holds up the end

    def __init__(self, host: str, port: int) -> None:
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise PantherError(f"cannot serve on {host}:{port} ({e.strerror})") from None
        self.predict: Predict | None = None  # set once the ensembles are loaded: healthy from then on
        self.busy = threading.Lock()
        self.open_connections = 0  # connections with a handler thread now, at most MAX_CONNECTIONS
        self._connections_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address) -> None:
        with self._connections_lock:
            admitted = self.open_connections < MAX_CONNECTIONS
            self.open_connections += admitted
        if not admitted:
            _refuse_at_once(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self.open_connections -= 1

    def handle_error(self, request, client_address) -> None:
        """A connection's failure is the caller's (gone, reset): never a traceback on GC's error channel."""

    def invoke(self, client_gone: Callable[[], bool]) -> tuple[HTTPStatus | None, str]:
        """One task, where the server is loaded and idle and the caller still there; (None, why) where no reply is
        to be sent (nobody is waiting for it)."""
        if self.predict is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, "loading"
        if not self.busy.acquire(blocking=False):
            log("invoke: refused (409), another task is running")
            return HTTPStatus.CONFLICT, "another task is running"
        started = time.perf_counter()
        try:
            if client_gone():  # nobody waits for this one: not a task
                log("invoke: the caller went away before the task began; nothing done")
                return None, "the caller went away"
            with on_stop(lambda signal_name: None):  # stopped meanwhile: an error line, not a quiet end
                written = self.predict(started)
        except Exception as e:  # one line (each failed image had its own already), and the server goes on
            if not isinstance(e, AlreadyReported):
                print_failure(e)
            bad_input = e.bad_input if isinstance(e, TaskFailed) else \
                isinstance(e, PantherError) and not isinstance(e, CaseFailure)
            return (HTTPStatus.UNPROCESSABLE_ENTITY if bad_input else HTTPStatus.INTERNAL_SERVER_ERROR), \
                "failed: see the log"
        finally:
            self.busy.release()
        log(f"invoke: {len(written)} mask(s) written in {time.perf_counter() - started:.1f}s (201)")
        return HTTPStatus.CREATED, f"{len(written)} mask(s) written"


class TaskFailed(AlreadyReported):
    """Some image of a task failed, each with its line already: the task's answer says whether only the input was
    at fault (422) or something else (500)."""

    def __init__(self, message: str, bad_input: bool) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def _refuse_at_once(request: socket.socket) -> None:
    body = b"too many connections\n"
    with suppress(OSError):
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class _WholeLines:
    """The request's stream, remembering the last line read: a header block ends with an empty line, never with the
    end of the stream (http.server takes both as its end, so a client cut off mid-headers would make a request)."""

    def __init__(self, stream) -> None:
        self.stream, self.last = stream, b""

    def readline(self, limit: int = -1) -> bytes:
        self.last = self.stream.readline(limit)
        return self.last

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class _Handler(BaseHTTPRequestHandler):
    server: InvokeServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # each read of a request: an idle or half-sent connection ends

    def setup(self) -> None:
        super().setup()
        self.rfile = _WholeLines(self.rfile)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version != "HTTP/0.9" and self.rfile.last not in (b"\r\n", b"\n"):
            self.close_connection = True  # the client went away before its headers ended: no request
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._body_read():
            return
        if self.path == "/health":
            ready = self.server.predict is not None
            self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, "ready" if ready else "loading")
        else:
            self._reply(HTTPStatus.NOT_FOUND, "GET /health or POST /invoke")

    def do_POST(self) -> None:  # noqa: N802
        if not self._body_read():
            return
        if self.path == "/invoke":
            status, text = self.server.invoke(self._client_gone)
            if status is None:
                self.close_connection = True
                return
            self._reply(status, text)
        else:
            self._reply(HTTPStatus.NOT_FOUND, "GET /health or POST /invoke")

    def _body_read(self) -> bool:
        """Whether the request arrived whole: any body it announces (none is expected) read and dropped, up to
        MAX_BODY_BYTES. A length that is no count, one above the cap, or a body cut short: answered or dropped,
        the connection closed, no route run."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(HTTPStatus.NOT_IMPLEMENTED, "no route takes a body")
        if length is None:
            return True
        if not length.strip().isdigit():
            return self._refuse(HTTPStatus.BAD_REQUEST, f"Content-Length must be a count of bytes, got {length!r}")
        size = int(length)
        if size > MAX_BODY_BYTES:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"no route takes a body ({size} bytes "
                                f"announced, at most {MAX_BODY_BYTES} read)")
        while size > 0:
            try:
                chunk = self.rfile.read(min(size, 8192))
            except OSError:  # timed out or reset: the body never came
                chunk = b""
            if not chunk:
                self.close_connection = True
                log(f"{self.command} {self.path}: the caller went away before its body arrived; nothing done")
                return False
            size -= len(chunk)
        return True

    def _refuse(self, status: HTTPStatus, why: str) -> bool:
        log(f"{self.command} {self.path}: {status.value} ({why})")
        self.close_connection = True
        self._reply(status, why)
        return False

    def _client_gone(self) -> bool:
        """Whether the caller has closed its end (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _reply(self, status: HTTPStatus, text: str) -> None:
        body = (text + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the caller has gone: what it asked for is done all the same
            self.close_connection = True
            log(f"{self.command} {self.path}: the caller went away before the reply ({status.value})")

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """No access log: stderr is for warnings and errors only."""


def serve(load: Callable[[], Predict], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          stop: threading.Event | None = None, folders: tuple[Path, Path] = (Path("/input"), Path("/output"))
          ) -> None:
    """Answer /health at once, run `load` (the heavy imports and the ensembles), then serve tasks (each predicts
    `folders`' input into its output) until `stop` is set or the process is stopped (the shim's SIGTERM at the end
    of the job). A problem in `load` raises, after the server is closed."""
    started = time.perf_counter()
    server = InvokeServer(host, port)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    try:
        log(f"invoke API on http://{host}:{port}: /health says 503 until the ensembles are loaded")
        server.predict = load()
        log(f"healthy {time.perf_counter() - started:.1f}s after start: POST /invoke predicts {folders[0]} into "
            f"{folders[1]}")
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
