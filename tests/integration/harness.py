"""Real processes for the process tests: sozu itself, backends, and ways to wait on them.

Everything listens on 127.0.0.1 on ports the kernel picked; everything started is stopped by
the test that started it (fixtures in conftest.py), even when the test fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; return its value, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # a condition that is not true yet may raise
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# -- the command socket, spoken directly ---------------------------------------------------------
def command(socket_path: str, request: dict, timeout: float = 10.0) -> dict:
    """Send one request; return the last answer for its id (OK or ERROR)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(json.dumps(request).encode() + b"\0")
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the proxy closed the command connection")
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                if not raw.strip():
                    continue
                answer = json.loads(raw)
                if answer.get("id") == request.get("id") and answer.get("status") in ("OK", "ERROR"):
                    return answer


_ids = iter(range(1, 1 << 62))


def order(socket_path: str, kind: str, data=None, **extra) -> dict:
    return command(socket_path, {"id": f"t{next(_ids)}", "version": 0, "type": "PROXY",
                                 "data": {"type": kind, "data": data}, **extra})


# -- sozu ----------------------------------------------------------------------------------------
class Sozu:
    """`python sozu.py start -c FILE` in its own process group."""

    def __init__(self, tmp_path: Path, config_text: str, name: str = "sozu"):
        self.dir = tmp_path
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.socket_path = str(tmp_path / "sozu.sock")
        self.log_path = tmp_path / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True, env: dict | None = None) -> "Sozu":
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "sozu.py"), "start", "-c", str(self.config_path)],
            stdout=self.log_file, stderr=subprocess.STDOUT, cwd=str(self.dir),
            env={**os.environ, **(env or {})}, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, workers: int | None = None, timeout: float = 15.0) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"sozu exited with {self.process.returncode}:\n{self.log()}")
            answer = self.command({"id": "ready", "version": 0, "type": "LIST_WORKERS"}, timeout=2)
            rows = [w for w in answer["data"]["workers"] if w["id"] != "master"]
            running = [w for w in rows if w["state"] == "running"]
            return running if rows and len(running) == len(rows) and (workers is None or len(running) >= workers) else None
        wait_for(ready, timeout, what="sozu workers to be running")

    def command(self, request: dict, timeout: float = 10.0) -> dict:
        return command(self.socket_path, request, timeout)

    def order(self, kind: str, data=None, **extra) -> dict:
        return order(self.socket_path, kind, data, **extra)

    def workers(self) -> list[dict]:
        answer = self.command({"id": "w", "version": 0, "type": "LIST_WORKERS"})
        return [w for w in answer["data"]["workers"] if w["id"] != "master"]

    def ctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(ROOT / "sozuctl.py"), "-c", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:  # workers, and any generation started by an upgrade, share the process group
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(5)
        self.log_file.close()


@contextlib.contextmanager
def running_proxy(tmp: Path, backend_port: int, extra: str = "", worker_count: int = 2):
    """A started sozu routing Host: localhost on a fresh port to backend_port; stopped at exit.
    It carries .port, .address ("127.0.0.1:PORT") and .dir."""
    port = free_port()
    s = Sozu(tmp, http_config(tmp, port, [backend_port], extra=extra, worker_count=worker_count))
    try:
        s.start()
        s.port, s.address, s.dir = port, f"127.0.0.1:{port}", tmp
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def proxy_and_backend(tmp: Path, name: str, worker_count: int = 1):
    """running_proxy() in front of its own Backend(name), which it carries as .backend."""
    backend = Backend(name)
    try:
        with running_proxy(tmp, backend.port, worker_count=worker_count) as s:
            s.backend = backend
            yield s
    finally:
        backend.stop()


@contextlib.contextmanager
def only_worker(proxy: "Sozu", worker_id: int):
    """Within this block a new connection can only be accepted by worker `worker_id`, whatever
    the kernel would choose: every other worker of `proxy` is stopped (SIGSTOP) meanwhile and
    continued after. Keep the block short: a stopped worker misses its heartbeats."""
    others = [w["pid"] for w in proxy.workers() if w["id"] != worker_id]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def on_each_worker(proxy: "Sozu", action) -> list:
    """action() once with each worker alone able to accept (only_worker): its results by worker."""
    results = []
    for worker in proxy.workers():
        with only_worker(proxy, worker["id"]):
            results.append(action())
    return results


def http_config(socket_path_dir: Path, listen_port: int, backends: list[int], *, worker_count: int = 2,
                max_connections: int = 500, extra: str = "", app_extra: str = "", hostname: str = "localhost",
                listener_extra: str = "") -> str:
    backend_list = ", ".join(f'"127.0.0.1:{p}"' for p in backends)
    return f"""
command_socket = "{socket_path_dir}/sozu.sock"
worker_count = {worker_count}
max_connections = {max_connections}
log_level = "info"
log_access_target = "stdout"
front_timeout = 10
back_timeout = 5
connect_timeout = 2
request_timeout = 3
shutdown_grace_period = 5
{extra}

[[listeners]]
protocol = "http"
address = "127.0.0.1:{listen_port}"
{listener_extra}

[applications.app]
protocol = "http"
{app_extra}
frontends = [ {{ address = "127.0.0.1:{listen_port}", hostname = "{hostname}" }} ]
backends = [ {backend_list} ]
"""


# -- backends ------------------------------------------------------------------------------------
class EchoHandler(BaseHTTPRequestHandler):
    """A backend that says what it received. Paths:
    /size/N      N bytes of body (Content-Length)
    /chunked/N   N bytes in chunks of 1000
    /close/N     N bytes, no length, then close
    /status/N    status N, empty body
    /slow/S      answers after S seconds
    anything else: JSON of the request (method, path, headers, body length, body sha)."""
    protocol_version = "HTTP/1.1"
    server_version = "test-backend"
    # The head and the body are written separately: with Nagle, the body waits for the proxy's
    # delayed ACK (40 ms a request on a kept-alive connection).
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        return

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.server.open_sockets.add(self.connection)

    def finish(self):
        with self.server.lock:
            self.server.open_sockets.discard(self.connection)
        super().finish()

    def handle_one_request(self):
        self.server.requests += 1
        return super().handle_one_request()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _any(self) -> None:
        with self.server.lock:
            self.server.active += 1
        try:
            self._answer()
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _answer(self) -> None:
        import hashlib
        body = self._body()
        parts = self.path.split("/")
        name = self.server.name
        if len(parts) >= 3 and parts[1] == "size":
            n = int(parts[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.send_header("X-Backend", name)
            self.end_headers()
            if self.command != "HEAD":
                block = b"x" * 65536
                while n:
                    piece = block[:min(n, len(block))]
                    self.wfile.write(piece)
                    n -= len(piece)
            return
        if len(parts) >= 3 and parts[1] == "chunked":
            n = int(parts[2])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Backend", name)
            self.end_headers()
            while n:
                piece = min(n, 1000)
                self.wfile.write(b"%x\r\n" % piece + b"c" * piece + b"\r\n")
                n -= piece
            self.wfile.write(b"0\r\n\r\n")
            return
        if len(parts) >= 3 and parts[1] == "close":
            n = int(parts[2])
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("X-Backend", name)
            self.end_headers()
            self.wfile.write(b"z" * n)
            self.close_connection = True
            return
        if len(parts) >= 3 and parts[1] == "status":
            self.send_response(int(parts[2]))
            self.send_header("Content-Length", "0")
            self.send_header("X-Backend", name)
            self.end_headers()
            return
        if len(parts) >= 3 and parts[1] == "slow":
            time.sleep(float(parts[2]))
        data = json.dumps({"backend": name, "method": self.command, "path": self.path,
                           "version": self.request_version,
                           "headers": [[k, v] for k, v in self.headers.items()],
                           "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend", name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _any


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 resets connections when many clients arrive at once

    def handle_error(self, request, client_address) -> None:
        # A proxy that closes a connection (a 504, a client gone) is normal in these tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Backend:
    """A threaded HTTP backend on 127.0.0.1 (real sockets, real HTTP/1.1 keep-alive)."""

    def __init__(self, name: str = "b", handler=EchoHandler, port: int = 0):
        self.server = _QuietServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.server.name = name
        self.server.requests = 0
        self.server.connections = 0  # TCP connections accepted
        self.server.active = 0  # requests being answered now
        self.server.open_sockets = set()
        self.server.lock = threading.Lock()
        self.port = self.server.server_address[1]
        # a short poll interval: stop() waits for it, and tests stop many backends
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        return self.server.requests

    @property
    def connections(self) -> int:
        return self.server.connections

    @property
    def active(self) -> int:
        """Requests being answered right now."""
        return self.server.active

    @property
    def open_connections(self) -> int:
        return len(self.server.open_sockets)

    def close_connections(self) -> None:
        """Close every open connection, as a backend's keep-alive timeout would."""
        with self.server.lock:
            sockets = list(self.server.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_head(conn, data: bytes = b"") -> bytes | None:
    """data and what conn sends next, until a whole head is there; None at end of stream."""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


class ThreadedServer:
    """A test server on a free port of 127.0.0.1: one thread per connection, each given to
    handle(conn), which subclasses define (and set their own attributes before calling this
    __init__: the accept thread starts in it). `connections` counts the accepted ones; stop()
    closes the listening socket, which ends the accept thread."""

    def __init__(self, backlog: int = 64):
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.sock.close()


class RawBackend(ThreadedServer):
    """A backend that answers each connection with a function of the bytes it received: for
    malformed, truncated or slow answers no real server would give."""

    def __init__(self, respond):
        self.respond = respond
        self.received: list[bytes] = []
        super().__init__()

    def handle(self, conn) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = read_head(conn)
                if data is None:
                    return
                self.received.append(data)
                self.respond(conn, data)
            except OSError:
                return


def raw_request(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes, return everything the proxy answered until it closed (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


# -- clients -------------------------------------------------------------------------------------
class Response:
    def __init__(self, version: str, status: int, reason: str, headers: list, body: bytes):
        self.version, self.status, self.reason, self.headers, self.body = version, status, reason, headers, body

    def header(self, name: str, default=None):
        values = self.all(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


def read_response(reader, method: str = "GET") -> Response:
    """One response from a binary file object (sock.makefile("rb")), with its body decoded
    (Content-Length, chunked or until close). Raises ConnectionError at end of file."""
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    version, status, reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = []
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    response = Response(version, int(status), reason, headers, b"")
    if method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
        return response
    if "chunked" in (response.header("Transfer-Encoding") or "").lower():
        body = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b""):
                    pass
                break
            body.append(reader.read(size))
            reader.readline()
        response.body = b"".join(body)
    elif response.header("Content-Length") is not None:
        response.body = reader.read(int(response.header("Content-Length")))
    else:
        response.body = reader.read()
    return response


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def http_apps_config(socket_path_dir: Path, listen_port: int, apps: dict, *, worker_count: int = 1,
                     listener_extra: str = "", extra: str = "", timeouts: str = "") -> str:
    """One http listener and several applications.
    apps: {app_id: {"fronts": [(hostname, path_begin) or {frontend table fields}, ...],
                    "backends": ["127.0.0.1:P" or {"address": ..., "weight": ..., ...}, ...],
                    "extra": "toml lines of the application table"}}
    timeouts: toml lines replacing the default timeouts (front/back/connect/request)."""
    def toml(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
        if isinstance(value, list):
            return "[ " + ", ".join(map(toml, value)) + " ]"
        return json.dumps(value)

    timeouts = timeouts or "front_timeout = 10\nback_timeout = 5\nconnect_timeout = 2\nrequest_timeout = 3"
    text = f"""
command_socket = "{socket_path_dir}/sozu.sock"
worker_count = {worker_count}
max_connections = 500
log_level = "info"
log_access_target = "stdout"
shutdown_grace_period = 5
{timeouts}
{extra}

[[listeners]]
protocol = "http"
address = "127.0.0.1:{listen_port}"
{listener_extra}
"""
    for app_id, app in apps.items():
        fronts = ", ".join(toml({"address": f"127.0.0.1:{listen_port}",
                                 **(front if isinstance(front, dict) else
                                    {"hostname": front[0], "path_begin": front[1]})})
                           for front in app["fronts"])
        backends = ", ".join(toml(b if isinstance(b, dict) else str(b)) for b in app["backends"])
        text += f"""
[applications.{app_id}]
protocol = "http"
{app.get("extra", "")}
frontends = [ {fronts} ]
backends = [ {backends} ]
"""
    return text


def request(port: int, method: str = "GET", path: str = "/", host: str = "localhost", headers: dict | None = None,
            body=None, timeout: float = 5.0, conn=None) -> Response:
    """One request with http.client (on conn when given, to keep it alive); the body is read whole."""
    import http.client
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        answer = conn.getresponse()
        data = answer.read()
        return Response(f"HTTP/{answer.version / 10:.1f}", answer.status, answer.reason,
                        list(answer.getheaders()), data)
    finally:
        if own:
            conn.close()


def routed_to(port: int, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, str | None]:
    """One GET on a fresh connection: (status, the X-Backend that answered it)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Backend")
    finally:
        conn.close()


def echo(response: Response) -> dict:
    """The EchoHandler's JSON, with its headers as a case-insensitive lookup helper."""
    data = json.loads(response.body)
    data["header"] = lambda name: [v for k, v in data["headers"] if k.lower() == name.lower()]
    return data
