"""HTTP/2 with prior knowledge on a plain HTTP listener (h2c_prior_knowledge; docs/http2.md),
with real clients: curl --http2-prior-knowledge, nghttp, and raw sockets for the first bytes.
HTTP/1.1 goes on on the same listener; a listener without the option answers the preface as an
HTTP/1.1 request of an unsupported version (505)."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import pytest
from hyperframe.frame import Frame, SettingsFrame

from tests.integration.harness import Backend, Sozu, free_port, http_apps_config, raw_request
from tests.integration.test_http2 import nghttp_ten_streams

pytestmark = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client is not installed")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h2c")
    web = Backend("web")
    h2c, plain, proxied = free_port(), free_port(), free_port()
    # The h2c listener, then one without the option and one behind a PROXY protocol balancer
    # (written after the first one's own lines).
    text = http_apps_config(tmp, h2c, {"web": {
        "fronts": [("a.test", "/"), {"address": f"127.0.0.1:{plain}", "hostname": "a.test"},
                   {"address": f"127.0.0.1:{proxied}", "hostname": "a.test"}],
        "backends": [f"127.0.0.1:{web.port}"]}},
        listener_extra=f"""h2c_prior_knowledge = true
http2_max_concurrent_streams = 20

[[listeners]]
protocol = "http"
address = "127.0.0.1:{plain}"

[[listeners]]
protocol = "http"
address = "127.0.0.1:{proxied}"
expect_proxy = true
h2c_prior_knowledge = true
""")
    sozu = Sozu(tmp, text).start()
    yield {"sozu": sozu, "h2c": h2c, "plain": plain, "proxied": proxied, "web": web, "tmp": tmp}
    sozu.stop()
    web.stop()


def curl(port: int, *args: str, path: str = "/hello") -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"a.test:{port}:127.0.0.1",
                           "-w", "\n%{http_version} %{http_code}", *args, f"http://a.test:{port}{path}"],
                          capture_output=True, timeout=15)


def read_frames(sock, wanted) -> list[Frame]:
    """Frames from the server until one satisfies wanted(frame) (the socket's timeout bounds it)."""
    data, frames = b"", []
    while not any(wanted(f) for f in frames):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {frames}"
        data += chunk
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9:9 + length]))
            frames.append(frame)
            data = data[9 + length:]
    return frames


def test_curl_with_prior_knowledge_is_served_http2_and_forwarded_over_http11(env):
    done = curl(env["h2c"], "--http2-prior-knowledge")
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit(b"\n", 1)
    assert status == b"2 200"
    seen = json.loads(body)
    assert seen["backend"] == "web" and seen["version"] == "HTTP/1.1" and seen["path"] == "/hello"
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["host"] == f"a.test:{env['h2c']}"
    assert headers["x-forwarded-proto"] == "http"


def test_nghttp_many_streams_on_one_cleartext_connection(env):
    frames = nghttp_ten_streams(f"http://127.0.0.1:{env['h2c']}")
    # The listener's own stream limit is what the server advertises.
    assert re.search(r"\[SETTINGS_MAX_CONCURRENT_STREAMS\(0x03\):20\]", frames), frames[:3000]


def test_http11_still_works_on_the_same_listener(env):
    done = curl(env["h2c"], "--http1.1")
    assert done.returncode == 0 and done.stdout.endswith(b"\n1.1 200"), done
    # A request whose first bytes could begin the preface ("P", then the rest) is HTTP/1.1 too.
    with socket.create_connection(("127.0.0.1", env["h2c"]), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"P")
        sock.sendall(b"OST /posted HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\nok")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert (seen["method"], seen["path"], seen["body_length"]) == ("POST", "/posted", 2)


def test_a_preface_in_two_pieces_is_still_http2(env):
    with socket.create_connection(("127.0.0.1", env["h2c"]), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(PREFACE[:7])
        sock.sendall(PREFACE[7:] + SettingsFrame(0).serialize())
        frames = read_frames(sock, lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert isinstance(frames[0], SettingsFrame)  # the server's SETTINGS: HTTP/2, not a 400


def test_a_client_that_closes_within_a_beginning_of_the_preface_is_let_go(env):
    with socket.create_connection(("127.0.0.1", env["h2c"]), timeout=5) as sock:
        sock.sendall(b"PRI * HT")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes (the timeout bounds it)
            answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert "unexpected error" not in env["sozu"].log()
    assert curl(env["h2c"], "--http2-prior-knowledge").stdout.endswith(b"\n2 200")


def test_a_beginning_of_the_preface_and_no_more_is_closed_after_request_timeout(env):
    """It may be an HTTP/2 client: no 408, a quiet close once request_timeout (3 s) passed."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", env["h2c"]), timeout=30) as sock:
        sock.sendall(b"PRI")
        assert sock.recv(65536) == b""  # closed, not reset, and nothing answered
    assert time.monotonic() - start >= 3


def test_without_the_option_the_preface_is_refused_as_http11(env):
    """As before the option existed: the HTTP/1.1 parser's answer to a request line of
    version HTTP/2.0."""
    answer = raw_request(env["plain"], PREFACE + SettingsFrame(0).serialize())
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:200]
    done = curl(env["plain"], "--http2-prior-knowledge")
    assert done.returncode != 0  # curl gets no HTTP/2 from it


def test_behind_a_proxy_protocol_header_both_protocols_still_work(env):
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n"
    with socket.create_connection(("127.0.0.1", env["proxied"]), timeout=5) as sock:
        sock.sendall(header + PREFACE + SettingsFrame(0).serialize())
        frames = read_frames(sock, lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert isinstance(frames[0], SettingsFrame)
    answer = raw_request(env["proxied"], header + b"GET /hi HTTP/1.1\r\nHost: a.test\r\n"
                                                  b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    headers = {name.lower(): value for name, value in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert headers["x-forwarded-for"] == "192.0.2.7"  # the header's client, not the balancer


def test_the_option_at_runtime_with_sozuctl(env):
    port = free_port()
    added = env["sozu"].ctl("listener", "http", "add", f"--address=127.0.0.1:{port}",
                            "--h2c-prior-knowledge")
    assert added.returncode == 0, added.stderr
    assert env["sozu"].ctl("listener", "http", "activate", f"--address=127.0.0.1:{port}").returncode == 0
    front = env["sozu"].ctl("frontend", "http", "add", "--id=web", f"--address=127.0.0.1:{port}",
                            "--hostname=a.test")
    assert front.returncode == 0, front.stderr
    done = curl(port, "--http2-prior-knowledge")
    assert done.returncode == 0 and done.stdout.endswith(b"\n2 200"), done
