"""HTTP/2 toward clients (ALPN h2), with real processes and real clients: curl --http2, nghttp,
and a Python client on h2 (tests/integration/h2client.py) for what well-behaved clients never
send. The backends are the harness's HTTP/1.1 servers."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from tests.integration.certs import TestCA
from tests.integration.h2client import Closed, H2Client
from tests.integration.harness import (Backend, RawBackend, Sozu, ThreadedServer, free_port, read_head,
                                      rss_kib, wait_for)

pytestmark = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client is not installed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h2")
    ca = TestCA(tmp / "pki")
    leaf = ca.issue(["a.test", "b.test", "t.test", "ws.test", "slow.test", "nowhere.test", "length.test",
                     "stream.test"])
    web, other = Backend("web"), Backend("other")
    # The stall tests' own backends: no other test's traffic, and no dead backend to skip first.
    stall, streamer = Backend("stall"), Streamer(60_000_000)
    # A whole response in one send: the proxy reads it in one piece, before the client's window
    # lets any of its body through.
    whole = RawBackend(lambda conn, head: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"w" * 1000))
    dead = free_port()  # nothing listens there: a backend that is down
    trailers = RawBackend(lambda conn, head: conn.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-check\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-check: 42\r\n\r\n"))
    websocket = RawBackend(lambda conn, head: (
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        conn.sendall(conn.recv(100))))
    notes = []  # (declared, received) of each body the lengths backend was given
    lengths = RawBackend(lambda conn, head: read_declared_body(conn, head, notes))
    port, h1_port, slow_port = free_port(), free_port(), free_port()
    cert = f'certificate = "{leaf.cert_path}", key = "{leaf.key_path}"'
    config = f"""
command_socket = "{tmp}/sozu.sock"
worker_count = 1
max_connections = 500
log_level = "info"
log_access_target = "stdout"
front_timeout = 10
back_timeout = 5
connect_timeout = 2
request_timeout = 5

[[listeners]]
protocol = "https"
address = "127.0.0.1:{port}"
http2_max_concurrent_streams = 20

[[listeners]]
protocol = "https"
address = "127.0.0.1:{h1_port}"
alpn = ["http/1.1"]

[[listeners]]
protocol = "https"
address = "127.0.0.1:{slow_port}"
front_timeout = 2

[applications.web]
protocol = "http"
frontends = [
  {{ address = "127.0.0.1:{port}", hostname = "a.test", {cert} }},
  {{ address = "127.0.0.1:{h1_port}", hostname = "a.test", {cert} }},
]
backends = [ "127.0.0.1:{web.port}", "127.0.0.1:{dead}" ]

[applications.stall]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{slow_port}", hostname = "slow.test", {cert} }} ]
backends = [ "127.0.0.1:{stall.port}" ]

[applications.whole]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{slow_port}", hostname = "slow.test", path = "/whole", {cert} }} ]
backends = [ "127.0.0.1:{whole.port}" ]

[applications.stream]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "stream.test", {cert} }} ]
backends = [ "127.0.0.1:{streamer.port}" ]

[applications.other]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "b.test", {cert} }} ]
backends = [ "127.0.0.1:{other.port}" ]

[applications.trailers]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "t.test", path = "/trailers", {cert} }} ]
backends = [ "127.0.0.1:{trailers.port}" ]

[applications.lengths]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "length.test", {cert} }} ]
backends = [ "127.0.0.1:{lengths.port}" ]

[applications.websocket]
protocol = "http"
frontends = [ {{ address = "127.0.0.1:{port}", hostname = "ws.test", {cert} }} ]
backends = [ "127.0.0.1:{websocket.port}" ]
"""
    sozu = Sozu(tmp, config).start()
    yield {"sozu": sozu, "port": port, "h1_port": h1_port, "slow_port": slow_port, "ca": ca,
           "web": web, "other": other, "tmp": tmp, "notes": notes, "stall": stall,
           "streamer": streamer, "whole": whole}
    sozu.stop()
    for backend in (web, other, trailers, websocket, lengths, stall, streamer, whole):
        backend.stop()


class Streamer(ThreadedServer):
    """A backend that answers every request with a `size`-byte body, as fast as the proxy
    takes it: `sent` counts what the proxy took, and `stalled` is set once one send waited
    STALL seconds (the proxy stopped reading). The connection is then kept until the proxy
    closes it."""
    STALL = 0.5

    def __init__(self, size: int):
        self.size, self.sent = size, 0
        self.stalled = threading.Event()
        super().__init__()

    def handle(self, conn) -> None:
        with conn:
            if read_head(conn) is None:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            block = memoryview(b"x" * 65536)
            conn.settimeout(self.STALL)
            try:
                while self.sent < self.size:
                    self.sent += conn.send(block[:self.size - self.sent])
            except socket.timeout:
                self.stalled.set()
            except OSError:
                return
            try:
                conn.settimeout(None)
                conn.recv(1)  # until the proxy closes (or resets) it
            except OSError:
                return


def read_declared_body(conn, head: bytes, notes: list) -> None:
    """A backend that reads the body its Content-Length announces, and notes what it got."""
    declared = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < declared:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    notes.append((declared, len(body)))
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def curl(env, path: str, *args: str, host: str = "a.test", port: int | None = None):
    port = port or env["port"]
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(env["ca"].path),
                           "--resolve", f"{host}:{port}:127.0.0.1", *args, f"https://{host}:{port}{path}"],
                          capture_output=True, timeout=15)


def client(env, **kwargs) -> H2Client:
    return H2Client(kwargs.pop("port", env["port"]), env["ca"].path, **kwargs)


def echo(response) -> dict:
    return json.loads(bytes(response.body))


def worker_pid(env) -> int:
    return env["sozu"].workers()[0]["pid"]


# --- serving ----------------------------------------------------------------------------------

def test_curl_http2_is_routed_and_forwarded_over_http11(env):
    done = curl(env, "/hello?x=1", "--http2", "-w", "\n%{http_version}")
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit(b"\n", 1)
    assert version == b"2"
    received = json.loads(body)
    headers = {k.lower(): v for k, v in received["headers"]}
    assert (received["backend"], received["path"], received["version"]) == ("web", "/hello?x=1", "HTTP/1.1")
    assert headers["host"] == f"a.test:{env['port']}"  # from :authority
    assert headers["x-forwarded-proto"] == "https" and headers["sozu-id"]
    wait_for(lambda: "200 GET a.test /hello in=" in env["sozu"].log(), what="the access log line")


def test_an_alpn_list_without_h2_serves_http11(env):
    done = curl(env, "/", "--http2", "-o", "/dev/null", "-w", "%{http_version}", port=env["h1_port"])
    assert done.stdout == b"1.1", done.stderr


def test_bodies_are_streamed_both_ways(env):
    upload = bytes(range(256)) * 8192  # 2 MiB
    path = env["tmp"] / "upload.bin"
    path.write_bytes(upload)
    done = curl(env, "/up", "--http2", "--data-binary", f"@{path}")
    assert done.returncode == 0, done.stderr
    received = echo_json(done.stdout)
    assert received["body_length"] == len(upload)
    assert received["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert ["content-length", str(len(upload))] in received["headers"]
    c = client(env)
    try:  # no content-length: the backend gets the DATA frames as chunks
        stream_id = c.start("/up", "POST", end=False)
        for start in range(0, len(upload), 16384):
            piece = upload[start:start + 16384]
            c.pump_until(lambda: c.conn.local_flow_control_window(stream_id) >= len(piece))
            c.conn.send_data(stream_id, piece)
            c.flush()
        c.conn.end_stream(stream_id)
        c.flush()
        received = echo(c.wait(stream_id))
        assert ["transfer-encoding", "chunked"] in received["headers"]
        assert received["body_sha256"] == hashlib.sha256(upload).hexdigest()
    finally:
        c.close()
    done = curl(env, "/size/5000000", "--http2")
    assert done.returncode == 0 and done.stdout == b"x" * 5_000_000


def echo_json(data: bytes) -> dict:
    return json.loads(data)


def nghttp_ten_streams(base_url: str) -> str:
    """nghttp's 10 requests to a.test on one connection, all sent before any answer: each
    answered 200 with its whole body. Its verbose output (the frames) is returned."""
    urls = [f"{base_url}/size/{1000 * i}" for i in range(1, 11)]
    done = subprocess.run(["nghttp", "-nv", "-H", ":authority: a.test", *urls],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(":status: 200") == 10, done.stdout[-3000:]
    assert sum(1000 * i for i in range(1, 11)) == sum(
        int(size) for size in re.findall(r"recv DATA frame <length=(\d+)", done.stdout))
    return done.stdout


def test_nghttp_many_streams_on_one_connection(env):
    nghttp_ten_streams(f"https://127.0.0.1:{env['port']}")


def test_h2load_20_concurrent_streams_per_connection(env):
    done = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "20", "-H", ":authority: a.test",
                           f"https://127.0.0.1:{env['port']}/size/100"], capture_output=True, text=True,
                          timeout=60)
    assert "200 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout + done.stderr
    assert "200 2xx" in done.stdout


def test_python_client_balancing_head_204_304_and_trailers(env):
    c = client(env)
    try:
        # the dead backend is skipped (passive health): every request answered, by web
        for _ in range(4):
            response = c.get("/x")
            assert response.status == 200 and echo(response)["backend"] == "web"
        head = c.get("/size/1234", method="HEAD")
        assert (head.status, head.header(b"content-length"), bytes(head.body)) == (200, b"1234", b"")
        assert c.get("/status/204").status == 204
        not_modified = c.get("/status/304")
        assert (not_modified.status, bytes(not_modified.body)) == (304, b"")
        c.host = "b.test"
        assert echo(c.get("/y"))["backend"] == "other"  # routed by :authority
        c.host = "t.test"
        trailed = c.get("/trailers")
        assert (bytes(trailed.body), trailed.trailers) == (b"hello", [(b"x-check", b"42")])
        c.host = "nowhere.test"
        assert c.get("/").status == 404
    finally:
        c.close()


def test_expect_100_continue(env):
    c = client(env)
    try:
        stream_id = c.start("/e", "POST", extra=[(b"content-length", b"3"), (b"expect", b"100-continue")],
                            end=False)
        c.pump_until(lambda: c.responses[stream_id].informational)
        assert c.responses[stream_id].informational[0] == [(b":status", b"100")]
        c.conn.send_data(stream_id, b"abc", end_stream=True)
        c.flush()
        assert echo(c.wait(stream_id))["body_length"] == 3
    finally:
        c.close()


# --- malformed requests: stream errors, never forwarded ----------------------------------------

@pytest.mark.parametrize("extra", [
    [(b"connection", b"keep-alive")],
    [(b"te", b"gzip")],
    [(b"X-Upper", b"1")],
    [(b"host", b"b.test")],          # :authority a.test, Host b.test
    [(b"transfer-encoding", b"chunked")],
])
def test_malformed_request_is_a_stream_error_and_reaches_no_backend(env, extra):
    c = client(env, validate=False)
    path = "/bad-" + extra[0][0].decode()
    try:
        response = c.wait(c.start(path, extra=extra))
        assert response.reset == ErrorCodes.PROTOCOL_ERROR and response.status is None
        assert echo(c.get(path + "-after"))["path"] == path + "-after"  # the connection goes on
        # /after's access line is written after its answer; /bad's would come before it
        wait_for(lambda: f"{path}-after in=" in env["sozu"].log(), what="the access line of /after")
        assert f"{path} in=" not in env["sozu"].log()  # no session ever saw the bad request
    finally:
        c.close()


@pytest.mark.parametrize("body", [b"12345", b"12"])  # more DATA than Content-Length: 3, less
def test_a_content_length_disagreeing_with_data_is_a_stream_error_and_no_complete_request(env, body):
    """The head may be on its way to a backend when the DATA that contradicts it arrives (in a
    later read): the backend then gets a head and less body than it announces, never a whole
    request; when both come in one read, no backend hears of it."""
    notes = env["notes"]
    c = client(env, host="length.test", validate=False)
    try:
        before = len(notes)
        stream_id = c.start("/bad", "POST", extra=[(b"content-length", b"3")], body=body)
        response = c.wait(stream_id)
        assert response.reset == ErrorCodes.PROTOCOL_ERROR and response.status is None
        assert c.get("/after", "POST", extra=[(b"content-length", b"3")], body=b"abc").status == 200
        wait_for(lambda: len(notes) > before, what="the backend to note /after")
        assert notes[-1] == (3, 3)  # /after, whole
        assert all(got < declared for declared, got in notes[before:-1])  # /bad, if it got there
    finally:
        c.close()


# --- limits and attacks -----------------------------------------------------------------------

def raw_headers(encoder, stream_id: int, host: str = "a.test", path: str = "/", end_stream=True,
                end_headers=True) -> HeadersFrame:
    frame = HeadersFrame(stream_id)
    frame.data = encoder.encode([(":method", "GET"), (":scheme", "https"), (":path", path),
                                 (":authority", host)])
    frame.flags = set(["END_STREAM"] * end_stream + ["END_HEADERS"] * end_headers)
    return frame


def other_client_is_served(env) -> None:
    c = client(env)
    try:
        assert c.get("/fine").status == 200
    finally:
        c.close()


def test_rapid_reset_gets_goaway_and_a_bounded_number_of_backend_requests(env):
    c = client(env)
    before = env["web"].requests
    encoder = c.conn.encoder
    try:
        burst = []
        for i in range(1000):
            stream_id = 2 * i + 1
            burst.append(raw_headers(encoder, stream_id, path="/slow/0.05").serialize())
            reset = RstStreamFrame(stream_id)
            reset.error_code = ErrorCodes.CANCEL
            burst.append(reset.serialize())
        try:
            c.send_raw(b"".join(burst))
        except OSError:
            pass  # closed while we were still sending: the point
        c.wait_closed()
        assert c.goaway is None or c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        c.close()
    other_client_is_served(env)
    time.sleep(0.5)  # let sessions that reached a backend before the GOAWAY finish counting
    assert env["web"].requests - before <= 200 + 1


def test_continuation_flood_is_cut_off(env):
    rss_before = rss_kib(worker_pid(env))
    c = client(env)
    try:
        start = raw_headers(c.conn.encoder, 1, end_headers=False).serialize()
        piece = ContinuationFrame(1)
        piece.data = b"\x00" * 16000  # never END_HEADERS
        try:
            c.send_raw(start + piece.serialize() * 200)
        except OSError:
            pass
        c.wait_closed()
    finally:
        c.close()
    other_client_is_served(env)
    assert rss_kib(worker_pid(env)) - rss_before < 20_000


@pytest.mark.parametrize("flood", ["ping", "settings"])
def test_ping_and_settings_floods_get_goaway(env, flood):
    c = client(env)
    try:
        frame = PingFrame(0, opaque_data=b"12345678") if flood == "ping" else SettingsFrame(0)
        try:
            c.send_raw(frame.serialize() * 1000)
        except OSError:
            pass
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        c.close()
    other_client_is_served(env)


def test_max_concurrent_streams_is_advertised_and_enforced(env):
    c = client(env, validate=False)
    try:
        c.pump_until(lambda: SettingCodes.MAX_CONCURRENT_STREAMS in c.conn.remote_settings)
        assert c.conn.remote_settings.max_concurrent_streams == 20
        c.conn.remote_settings.acknowledge()
        frames = b"".join(raw_headers(c.conn.encoder, 2 * i + 1, path="/slow/1").serialize()
                          for i in range(21))
        c.send_raw(frames)
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    finally:
        c.close()


def test_header_list_and_hpack_table_limits(env):
    c = client(env, validate=False)
    try:
        big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(40)]  # 40 KB > 32 KiB
        c.start("/big", extra=big)
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        c.close()
    c = client(env)
    try:
        encoder = hpack.Encoder()
        encoder.header_table_size = 65536  # announces a table larger than sozu's 4 KiB
        frame = HeadersFrame(1)
        frame.data = encoder.encode([(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                     (":authority", "a.test")])
        frame.flags = {"END_STREAM", "END_HEADERS"}
        c.send_raw(frame.serialize())
        c.wait_closed()
        # h2 reports every HPACK decoding failure as PROTOCOL_ERROR
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    finally:
        c.close()
    other_client_is_served(env)


def test_a_zero_window_stall_ends_with_front_timeout(env):
    """A client that never opens its window: the stream is reset once front_timeout (2 s here)
    passed without progress, its backend connection is closed, then the idle connection goes.
    Each step is awaited as a condition, with deadlines a loaded machine cannot reach; the only
    time asserted is the lower bound, which load cannot break: no reset before front_timeout."""
    stall = env["stall"]
    c = client(env, port=env["slow_port"], host="slow.test", settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        start = time.monotonic()
        stream_id = c.start("/size/100000")
        try:
            response = c.wait(stream_id, timeout=30)
        except Closed:
            raise AssertionError(env["sozu"].log()[-3000:]) from None
        assert response.status == 200 and response.reset is not None and not response.body
        assert time.monotonic() - start >= 2
        wait_for(lambda: stall.connections == 1 and stall.open_connections == 0, timeout=30,
                 what="the stalled stream's backend connection closed")
        c.wait_closed(timeout=30)
    finally:
        c.close()


def test_a_zero_window_stall_of_a_response_read_whole_ends_with_a_reset(env):
    """The backend's whole answer came in one read, so the session handed all of it over before
    the stalled window let any body through: at front_timeout the stream still ends with a
    reset, not as if the response had been sent (the client would wait for a body that never
    comes, until the connection's idle timeout)."""
    c = client(env, port=env["slow_port"], host="slow.test", settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        stream_id = c.start("/whole")
        response = c.wait(stream_id, timeout=30)
        assert response.status == 200 and response.reset == ErrorCodes.INTERNAL_ERROR and not response.body
        assert env["whole"].received, "the request never reached the one-piece backend"
    finally:
        c.close()


def test_a_slow_reader_never_makes_the_worker_buffer_the_body(env):
    """A client that takes one window of a 60 MB body and acknowledges nothing: once the proxy
    stops reading the backend (the backend's send waits), the worker holds no more of the body
    than its buffers."""
    streamer = env["streamer"]
    pid = worker_pid(env)
    rss_before = rss_kib(pid)
    c = client(env, host="stream.test", settings={SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    c.conn.acknowledge_received_data = lambda size, stream_id: None  # read, never acknowledge
    try:
        stream_id = c.start("/")
        c.pump_until(lambda: len(c.responses[stream_id].body) >= 65535, timeout=30)
        assert streamer.stalled.wait(30), f"the backend was never held back ({streamer.sent} bytes sent)"
        assert rss_kib(pid) - rss_before < 20_000
        assert streamer.sent < 20_000_000  # socket buffers and the session's, not the body
        assert len(c.responses[stream_id].body) == 65535
    finally:
        c.close()


# --- WebSocket beside it ----------------------------------------------------------------------

def test_http11_upgrade_still_works_on_an_h2_listener(env):
    """A client that offers http/1.1 only, on the same listener, gets its Upgrade tunnel."""
    context = ssl.create_default_context(cafile=str(env["ca"].path))
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", env["port"]), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="ws.test") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(1000)
        assert head.startswith(b"HTTP/1.1 101")
        tls.sendall(b"ping-frame")
        assert tls.recv(100) == b"ping-frame"
