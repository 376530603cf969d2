"""TCP listeners with real processes: echo backends, big and many transfers, half-close, dead
backends, runtime changes, timeouts, bounded buffers and the PROXY protocol."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sozu import proxy_protocol
from tests.integration.harness import Sozu, ThreadedServer, free_port, rss_kib, wait_for


# --- backends -----------------------------------------------------------------------------------

class TcpBackend(ThreadedServer):
    """A threaded TCP server on 127.0.0.1. Modes:
    echo       bytes back as they come; half-closes its side after the client's EOF
    after_eof  reads to EOF, then answers `got N <sha256>` and closes (needs the half-close)
    flood      sends `flood` bytes at once, then closes
    Each connection first sends `greeting` (to tell backends apart) and, with proxy=True, first
    reads a PROXY header, kept in `headers`."""

    def __init__(self, mode: str = "echo", greeting: bytes = b"", proxy: bool = False, flood: int = 0):
        self.mode, self.greeting, self.proxy, self.flood = mode, greeting, proxy, flood
        self.headers: list = []
        super().__init__(backlog=256)

    def _read_header(self, conn) -> bytes:
        buf = b""
        while True:
            parsed = proxy_protocol.parse(buf)
            if parsed is not None:
                self.headers.append(parsed[0])
                return buf[parsed[1]:]
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the PROXY header")
            buf += chunk

    def handle(self, conn) -> None:
        with conn:
            try:
                conn.settimeout(20)
                rest = self._read_header(conn) if self.proxy else b""
                if self.greeting:
                    conn.sendall(self.greeting)
                if self.mode == "flood":
                    block = b"f" * 65536
                    left = self.flood
                    while left:
                        conn.sendall(block[:min(left, len(block))])
                        left -= min(left, len(block))
                    return
                digest, total = hashlib.sha256(rest), len(rest)
                if self.mode == "echo" and rest:
                    conn.sendall(rest)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    if self.mode == "echo":
                        conn.sendall(data)
                    digest.update(data)
                    total += len(data)
                if self.mode == "after_eof":
                    conn.sendall(f"got {total} {digest.hexdigest()}".encode())
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                return

def round_trip(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send everything (from a thread) while reading, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        def send():
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        sender.join(timeout)
        return b"".join(chunks)


def read_to_eof(sock, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# --- one sozu for the module --------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tcp")
    echo1, echo2 = TcpBackend(greeting=b"e1:"), TcpBackend(greeting=b"e2:")
    plain = TcpBackend()
    after_eof = TcpBackend("after_eof")
    proxied = TcpBackend("echo", proxy=True)
    dead_port = free_port()  # nothing listens there
    ports = {name: free_port() for name in ("rr", "plain", "eof", "dead", "proxy", "http_proxy")}
    http_backend_port = free_port()
    from tests.integration.harness import Backend
    http_backend = Backend("h1", port=http_backend_port)
    config = f"""
command_socket = "{tmp}/sozu.sock"
worker_count = 2
max_connections = 500
buffer_size = 16384
log_level = "info"
log_access_target = "stdout"
front_timeout = 10
back_timeout = 10
connect_timeout = 1
request_timeout = 2

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{ports['rr']}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{ports['plain']}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{ports['eof']}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{ports['dead']}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{ports['proxy']}"
expect_proxy = true

[[listeners]]
protocol = "http"
address = "127.0.0.1:{ports['http_proxy']}"
expect_proxy = true

[applications.rr]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{ports['rr']}" }} ]
backends = [ "{echo1.address}", "{echo2.address}" ]

[applications.plain]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{ports['plain']}" }} ]
backends = [ "127.0.0.1:{dead_port}", "{plain.address}" ]

[applications.eof]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{ports['eof']}" }} ]
backends = [ "{after_eof.address}" ]

[applications.dead]
protocol = "tcp"
frontends = [ {{ address = "127.0.0.1:{ports['dead']}" }} ]
backends = [ "127.0.0.1:{dead_port}" ]

[applications.proxied]
protocol = "tcp"
send_proxy = true
frontends = [ {{ address = "127.0.0.1:{ports['proxy']}" }} ]
backends = [ "{proxied.address}" ]

[applications.web]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{ports['http_proxy']}", hostname = "localhost" }} ]
backends = [ "127.0.0.1:{http_backend_port}" ]
"""
    sozu = Sozu(tmp, config).start()
    yield {"sozu": sozu, "ports": ports, "echo1": echo1, "echo2": echo2, "plain": plain,
           "proxied": proxied, "dead_port": dead_port, "tmp": tmp}
    sozu.stop()
    http_backend.stop()
    for backend in (echo1, echo2, plain, after_eof, proxied):
        backend.stop()


# --- relaying ---------------------------------------------------------------------------------

def test_one_mib_round_trip_is_byte_exact(env):
    data = os.urandom(1 << 20)
    # The first backend of `plain` is dead: the connect moves on to the live one.
    assert round_trip(env["ports"]["plain"], data) == data


def test_a_hundred_concurrent_connections(env):
    port = env["ports"]["plain"]

    def one(i: int) -> bool:
        data = (b"%03d" % i) * 3000
        return round_trip(port, data) == data

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    assert all(results), f"{results.count(False)} of 100 connections failed"


def test_half_close_reaches_the_backend_and_its_answer_comes_back(env):
    with socket.create_connection(("127.0.0.1", env["ports"]["eof"]), timeout=5) as sock:
        payload = b"question" * 1000
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the backend answers only after seeing this EOF
        answer = read_to_eof(sock)
    assert answer == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


def test_round_robin_over_backends(env):
    greetings = []
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", env["ports"]["rr"]), timeout=5) as sock:
            sock.shutdown(socket.SHUT_WR)
            greetings.append(read_to_eof(sock))
    # Each worker alternates on its own; the kernel spreads connections between the two.
    assert set(greetings) == {b"e1:", b"e2:"}
    assert abs(greetings.count(b"e1:") - greetings.count(b"e2:")) <= 2, greetings


def test_a_dead_backend_closes_the_client_quickly(env):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", env["ports"]["dead"]), timeout=5) as sock:
        sock.sendall(b"anyone?")
        assert read_to_eof(sock) == b""
    assert time.monotonic() - start < 1.0


def test_backends_change_at_runtime(env):
    sozu, rr = env["sozu"], env["ports"]["rr"]
    e3 = TcpBackend(greeting=b"e3:")
    try:
        for backend_id, backend in (("rr-0", env["echo1"]), ("rr-1", env["echo2"])):
            answer = sozu.order("REMOVE_BACKEND", {"app_id": "rr", "backend_id": backend_id,
                                                    "address": backend.address})
            assert answer["status"] == "OK", answer
        answer = sozu.order("ADD_BACKEND", {"app_id": "rr", "backend_id": "e3", "address": e3.address})
        assert answer["status"] == "OK", answer
        for _ in range(4):
            assert round_trip(rr, b"x") == b"e3:x"
    finally:
        sozu.order("REMOVE_BACKEND", {"app_id": "rr", "backend_id": "e3", "address": e3.address})
        for backend_id, backend in (("rr-0", env["echo1"]), ("rr-1", env["echo2"])):
            sozu.order("ADD_BACKEND", {"app_id": "rr", "backend_id": backend_id, "address": backend.address})
        e3.stop()


def test_listener_application_and_frontend_added_at_runtime_with_timeouts(env):
    sozu, port = env["sozu"], free_port()
    echo = TcpBackend()
    try:
        for kind, data in (
                ("ADD_TCP_LISTENER", {"front": f"127.0.0.1:{port}", "front_timeout": 1, "back_timeout": 1}),
                ("ACTIVATE_LISTENER", {"front": f"127.0.0.1:{port}", "proxy": "TCP"}),
                ("ADD_APPLICATION", {"app_id": "late"}),
                ("ADD_BACKEND", {"app_id": "late", "backend_id": "l1", "address": echo.address}),
                ("ADD_TCP_FRONT", {"app_id": "late", "address": f"127.0.0.1:{port}"})):
            answer = sozu.order(kind, data)
            assert answer["status"] == "OK", (kind, answer)
        assert round_trip(port, b"late bytes") == b"late bytes"
        # Idle for longer than front_timeout/back_timeout (1 s): sozu closes the connection.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"hi")
            sock.settimeout(5)
            assert sock.recv(10) == b"hi"
            start = time.monotonic()
            assert read_to_eof(sock) == b""
            idle = time.monotonic() - start
        assert 0.8 < idle < 2.0, idle
    finally:
        sozu.order("REMOVE_LISTENER", {"front": f"127.0.0.1:{port}", "proxy": "TCP"})
        sozu.order("REMOVE_APPLICATION", "late")
        echo.stop()


def test_a_slow_reader_costs_the_proxy_only_a_few_buffers(env):
    sozu = env["sozu"]
    flood = TcpBackend("flood", flood=48 << 20)
    port = free_port()
    try:
        for kind, data in (
                ("ADD_TCP_LISTENER", {"front": f"127.0.0.1:{port}"}),
                ("ACTIVATE_LISTENER", {"front": f"127.0.0.1:{port}", "proxy": "TCP"}),
                ("ADD_APPLICATION", {"app_id": "flood"}),
                ("ADD_BACKEND", {"app_id": "flood", "backend_id": "f1", "address": flood.address}),
                ("ADD_TCP_FRONT", {"app_id": "flood", "address": f"127.0.0.1:{port}"})):
            assert sozu.order(kind, data)["status"] == "OK"
        pids = [w["pid"] for w in sozu.workers()]
        before = {pid: rss_kib(pid) for pid in pids}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            time.sleep(1.5)  # read nothing: the backend pushes 48 MiB as fast as it can
            growth = max(rss_kib(pid) - before[pid] for pid in pids)
            total = len(read_to_eof(sock, timeout=20))
        assert total == 48 << 20
        assert growth < 4096, f"a worker grew by {growth} KiB while its client did not read"
    finally:
        sozu.order("REMOVE_LISTENER", {"front": f"127.0.0.1:{port}", "proxy": "TCP"})
        sozu.order("REMOVE_APPLICATION", "flood")
        flood.stop()


def test_tcp_connections_count_in_the_connection_limit(env):
    sozu = env["sozu"]
    socks = [socket.create_connection(("127.0.0.1", env["ports"]["plain"]), timeout=5) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"

        def active():
            answer = sozu.order("METRICS")
            return sum(w.get("active_connections", 0) for w in answer["data"]["workers"].values())
        wait_for(lambda: active() >= 6, 5, what="6 active connections in the workers' metrics")
    finally:
        for sock in socks:
            sock.close()


# --- PROXY protocol -----------------------------------------------------------------------------

def test_expect_proxy_then_send_proxy_carries_the_real_client(env):
    proxied = env["proxied"]
    proxied.headers.clear()
    header = b"PROXY TCP4 203.0.113.9 192.0.2.80 40000 443\r\n"
    assert round_trip(env["ports"]["proxy"], header + b"payload") == b"payload"
    received = proxied.headers[-1]
    assert (received.version, received.source, received.destination) == (
        2, ("203.0.113.9", 40000), ("192.0.2.80", 443))
    v2 = proxy_protocol.encode_v2(("2001:db8::7", 5555), ("2001:db8::1", 443))
    assert round_trip(env["ports"]["proxy"], v2 + b"more") == b"more"
    assert proxied.headers[-1].source == ("2001:db8::7", 5555)


def test_send_proxy_version_1_on_request_at_runtime(env):
    proxied, sozu = env["proxied"], env["sozu"]
    settings = {"app_id": "proxied", "proxy_protocol": "SendHeader"}
    try:
        assert sozu.order("ADD_APPLICATION", dict(settings, send_proxy_version=1))["status"] == "OK"
        header = b"PROXY TCP4 203.0.113.9 192.0.2.80 40000 443\r\n"
        assert round_trip(env["ports"]["proxy"], header + b"v1") == b"v1"
        received = proxied.headers[-1]
        assert (received.version, received.source) == (1, ("203.0.113.9", 40000))
    finally:
        assert sozu.order("ADD_APPLICATION", settings)["status"] == "OK"


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"PROXY TCP4 203.0.113.9 192.0.2.80 40000 99999\r\npayload",
    proxy_protocol.V2_SIGNATURE + b"\x13\x11\x00\x0c" + bytes(12),
])
def test_a_malformed_proxy_header_closes_the_connection(env, garbage):
    proxied = env["proxied"]
    before = proxied.connections
    with socket.create_connection(("127.0.0.1", env["ports"]["proxy"]), timeout=5) as sock:
        sock.sendall(garbage)
        assert read_to_eof(sock) == b""
    assert proxied.connections == before  # the backend never saw it


def test_http_listener_with_expect_proxy_forwards_the_real_client(env):
    import json
    port = env["ports"]["http_proxy"]
    request = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    header = proxy_protocol.encode_v2(("198.51.100.23", 1234), ("127.0.0.1", port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(header + request)
        answer = read_to_eof(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:200]
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "198.51.100.23"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)  # no header: refused without an answer
        assert read_to_eof(sock) == b""
