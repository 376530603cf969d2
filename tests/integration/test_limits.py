"""The connection limit (docs/architecture.md, "Connection limit") and the file-descriptor limit at start."""
from __future__ import annotations

import http.client
import resource
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.integration.certs import TestCA
from tests.integration.harness import PYTHON, ROOT, ThreadedServer, free_port, wait_for
from tests.integration.load import rss_kib

LIMIT = 10  # per worker


class TcpEcho(ThreadedServer):
    """A TCP backend that echoes, one thread per connection."""

    @staticmethod
    def handle(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return


def limits_config(tmp_path, http_port, tcp_port, https_port, backend_port, tcp_backend_port, leaf,
                  worker_count=2) -> str:
    return f"""
command_socket = "{tmp_path}/sozu.sock"
worker_count = {worker_count}
max_connections = {LIMIT}
log_level = "info"
log_access_target = "off"
front_timeout = 30
request_timeout = 5
shutdown_grace_period = 2

[[listeners]]
protocol = "http"
address = "127.0.0.1:{http_port}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{tcp_port}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{https_port}"

[applications.app]
protocol = "http"
frontends = [
  {{ address = "127.0.0.1:{http_port}", hostname = "localhost" }},
  {{ address = "127.0.0.1:{https_port}", hostname = "localhost", certificate = "{leaf.cert_path}", key = "{leaf.key_path}" }},
]
backends = [ "127.0.0.1:{backend_port}" ]

[applications.echo]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{tcp_port}" }} ]
backends = [ "127.0.0.1:{tcp_backend_port}" ]
"""


def keep_alive_connection(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Host": "localhost"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return conn


def active_connections(s) -> dict:
    answer = s.order("METRICS", None)
    assert answer["status"] == "OK", answer
    return {w: counters.get("active_connections") for w, counters in answer["data"]["workers"].items()}


def refused_count(s) -> int:
    answer = s.order("METRICS", None)
    return sum(c.get("refused_connections", 0) for c in answer["data"]["workers"].values())


def test_full_workers_leave_connections_to_others_then_refuse_cheaply(tmp_path, sozu, backend):
    """2 workers x 10: 20 clients are all served (each worker takes 10); then every new
    connection is refused within 1 s (HTTP: 503 + Retry-After + close; TCP and TLS: close),
    the workers' memory stays flat through a flood of 500, and the 20 open connections keep
    being served at normal latency meanwhile."""
    b = backend("b1")
    echo = TcpEcho()
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue(["localhost"])
    http_port, tcp_port, https_port = free_port(), free_port(), free_port()
    s = sozu(limits_config(tmp_path, http_port, tcp_port, https_port, b.port, echo.port, leaf))
    try:
        opened = [keep_alive_connection(http_port) for _ in range(2 * LIMIT)]
        wait_for(lambda: sorted(active_connections(s).values()) == [LIMIT, LIMIT], 3,
                 what="each worker to hold 10 connections")

        # HTTP: 503, Retry-After, close; within 1 s.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", http_port), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = _read_until_close(sock)
        assert time.monotonic() - started < 1.0
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert b"\r\nRetry-After: 1" in head and b"\r\nConnection: close" in head

        # TCP: closed without a byte, within 1 s.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=3) as sock:
            sock.sendall(b"ping")
            assert _read_until_close(sock) == b""
        assert time.monotonic() - started < 1.0

        # TLS: closed before the handshake completes, within 1 s.
        started = time.monotonic()
        context = ssl.create_default_context(cafile=str(ca.path))
        with socket.create_connection(("127.0.0.1", https_port), timeout=3) as sock:
            try:
                context.wrap_socket(sock, server_hostname="localhost").close()
                raise AssertionError("the TLS handshake succeeded over the limit")
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass
        assert time.monotonic() - started < 1.0

        # A flood: refused quickly, at no memory cost, while the open connections are served.
        workers = [w["pid"] for w in s.workers()]
        rss_before = {pid: rss_kib(pid) for pid in workers}
        refused_before = refused_count(s)
        latencies, stop = [], threading.Event()

        def served_meanwhile():
            while not stop.is_set():
                for conn in opened:
                    t = time.monotonic()
                    conn.request("GET", "/", headers={"Host": "localhost"})
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                    latencies.append(time.monotonic() - t)

        meanwhile = threading.Thread(target=served_meanwhile)
        meanwhile.start()
        slowest, statuses = _flood(http_port, 500, threads=10)
        stop.set()
        meanwhile.join(10)
        assert statuses == {503: 500}, statuses
        assert slowest < 1.0, slowest
        assert len(latencies) >= 2 * LIMIT
        latencies.sort()
        assert latencies[int(len(latencies) * 0.99) - 1] < 0.2, latencies[-10:]
        growth = {pid: rss_kib(pid) - rss_before[pid] for pid in workers}
        assert all(g < 2048 for g in growth.values()), growth  # KiB
        assert refused_count(s) - refused_before >= 500
        assert sorted(active_connections(s).values()) == [LIMIT, LIMIT]  # no greenlet taken

        # Room again: a connection closes, a new client is served.
        opened.pop().close()
        wait_for(lambda: _status(http_port) == 200, 3, what="a new client to be served")
    finally:
        echo.stop()


def _read_until_close(sock) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _status(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return int(_read_until_close(sock).split(b" ", 2)[1])


def _flood(port: int, count: int, threads: int):
    """count connections from several threads at once; the slowest answer and the statuses."""
    results, lock = [], threading.Lock()

    def one_thread(n):
        for _ in range(n):
            t = time.monotonic()
            try:
                status = _status(port)
            except OSError as error:
                status = type(error).__name__
            with lock:
                results.append((time.monotonic() - t, status))

    pool = [threading.Thread(target=one_thread, args=(count // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    statuses = {}
    for _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    return max(d for d, _ in results), statuses


# -- the file-descriptor limit at start ---------------------------------------------------------
def _fd_config(tmp_path, port, max_connections: int) -> str:
    return f"""
command_socket = "{tmp_path}/sozu.sock"
worker_count = 2
max_connections = {max_connections}
log_level = "info"

[[listeners]]
protocol = "http"
address = "127.0.0.1:{port}"
"""


def test_the_soft_fd_limit_is_raised_to_fit_max_connections(tmp_path, sozu):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 5000 * 2 + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit {hard} is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by sozu
    try:
        s = sozu(_fd_config(tmp_path, free_port(), 5000))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "raised the file descriptor limit from 1024 to %d" % needed in s.log()
    for worker in s.workers():
        assert _soft_nofile(worker["pid"]) == needed


def test_a_max_connections_that_cannot_fit_is_refused_at_start(tmp_path):
    """Even root cannot raise the hard limit past fs.nr_open: sozu says so and exits 1."""
    config = tmp_path / "sozu.toml"
    config.write_text(_fd_config(tmp_path, free_port(), 1_000_000))
    with open("/proc/sys/fs/nr_open") as file:
        if int(file.read()) >= 2_000_256:  # the kernel's ceiling, 1048576 by default
            pytest.skip("fs.nr_open is high enough for root to raise the hard limit that far")
    out = subprocess.run([PYTHON, str(ROOT / "sozu.py"), "start", "-c", str(config)],
                         capture_output=True, text=True, timeout=20, cwd=tmp_path,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)))
    assert out.returncode == 1
    assert ("max_connections = 1000000 needs 2000256 file descriptors per worker, but the hard "
            "limit (ulimit -Hn) is 4096") in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "sozu.sock").exists()


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as file:
        for line in file:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open files limit")
