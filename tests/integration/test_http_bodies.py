"""Bodies through a real proxy: Content-Length, chunked and read-until-close, both ways;
Expect: 100-continue; HEAD, 204, 304; HTTP/1.0 clients; pipelining; curl as a client."""
import hashlib
import json
import os
import socket
import subprocess
import time

import pytest

from tests.integration.harness import (
    RawBackend,
    Sozu,
    echo,
    free_port,
    http_config,
    proxy_and_backend,
    read_head,
    read_response,
    request,
)

H = b"Host: localhost\r\n"


@pytest.fixture(scope="module")
def proxy1(tmp_path_factory):
    with proxy_and_backend(tmp_path_factory.mktemp("bodies"), "bodies") as proxy:
        yield proxy


def connect(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock, sock.makefile("rb")


def test_content_length_upload(proxy1):
    body = os.urandom(3 * 1024 * 1024 + 17)
    seen = echo(request(proxy1.port, "POST", "/upload", body=body))
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_upload(proxy1):
    pieces = [os.urandom(n) for n in (1, 5000, 70000, 3)]
    response = request(proxy1.port, "POST", "/upload", body=iter(pieces))  # http.client chunks it
    seen = echo(response)
    assert seen["header"]("Transfer-Encoding") == ["chunked"]
    assert seen["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_chunked_upload_with_extensions_and_trailers(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"POST /t HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        seen = json.loads(read_response(reader).body)
    assert seen["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


@pytest.mark.parametrize("kind", ["size", "chunked", "close"])
def test_downloads(proxy1, kind):
    response = request(proxy1.port, "GET", f"/{kind}/300001")
    assert response.status == 200
    assert len(response.body) == 300001
    assert response.body == {"size": b"x", "chunked": b"c", "close": b"z"}[kind] * 300001


def test_read_until_close_response_ends_the_client_connection(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"GET /close/5000 HTTP/1.1\r\n" + H + b"\r\n")
        response = read_response(reader)  # reads until the proxy closes
    assert response.header("Connection") == "close"
    assert response.body == b"z" * 5000


def test_expect_100_continue(proxy1):
    body = os.urandom(200000)
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"PUT /expect HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = read_response(reader)
        assert interim.status == 100, "the client waits for 100 Continue before its body"
        sock.sendall(body)
        response = read_response(reader)
    seen = json.loads(response.body)
    assert response.status == 200
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert not [v for k, v in seen["headers"] if k.lower() == "expect"], "sozu answered Expect itself"


def test_expect_100_continue_without_route_answers_at_once(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: nowhere\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        response = read_response(reader)
    assert response.status == 404, "no 100 Continue for a request that has nowhere to go"


def test_head_has_no_body_and_keeps_the_connection(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"HEAD /size/1000 HTTP/1.1\r\n" + H + b"\r\nGET /size/3 HTTP/1.1\r\n" + H + b"\r\n")
        head = read_response(reader, method="HEAD")
        get = read_response(reader)
    assert head.status == 200 and head.header("Content-Length") == "1000" and head.body == b""
    assert get.body == b"xxx"


@pytest.fixture(scope="module")
def bodiless(tmp_path_factory):
    """A backend answering 204 and 304 the way real servers do: 304 with the Content-Length of
    the representation, 204 without any; and never a body."""
    tmp = tmp_path_factory.mktemp("bodiless")

    def respond(conn, data):
        while data:
            head, _, data = data.partition(b"\r\n\r\n")
            if b" /304 " in head:
                conn.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\nETag: \"a\"\r\n\r\n")
            elif b" /204 " in head:
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            data = read_head(conn, data)
            if data is None:
                return

    raw = RawBackend(respond)
    port = free_port()
    proxy = Sozu(tmp, http_config(tmp, port, [raw.port], worker_count=1)).start()
    proxy.port = port
    yield proxy
    proxy.stop()
    raw.stop()


def test_204_and_304_have_no_body_and_keep_both_connections(bodiless):
    sock, reader = connect(bodiless)
    with sock:
        for path, status in (("/204", 204), ("/304", 304), ("/200", 200), ("/304", 304), ("/200", 200)):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode())
            response = read_response(reader)
            assert response.status == status
            assert response.body == (b"ok" if status == 200 else b"")


def test_http10_keep_alive_client(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        for _ in range(3):
            sock.sendall(b"GET /size/10 HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n")
            response = read_response(reader)
            assert response.status == 200 and response.body == b"x" * 10
            assert response.header("Connection") == "keep-alive"


def test_http10_client_without_host_has_no_route(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_response(reader).status == 404


def test_http10_client_gets_a_read_until_close_body(proxy1):
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"GET /close/1234 HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n")
        response = read_response(reader)
    assert response.body == b"z" * 1234 and response.header("Connection") == "close"


def test_pipelined_requests_are_answered_in_order(proxy1):
    body = b"a" * 1000
    sock, reader = connect(proxy1)
    with sock:
        sock.sendall(b"GET /size/1 HTTP/1.1\r\n" + H + b"\r\n"
                     b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\n" + body +
                     b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                     b"GET /chunked/2500 HTTP/1.1\r\n" + H + b"\r\n"
                     b"GET /size/2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        answers = [read_response(reader) for _ in range(5)]
        assert reader.read() == b""
    assert answers[0].body == b"x"
    assert json.loads(answers[1].body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(answers[2].body)["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert answers[3].body == b"c" * 2500
    assert answers[4].body == b"xx" and answers[4].header("Connection") == "close"


def test_curl_upload_with_expect_and_download(proxy1, tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    path = tmp_path / "up.bin"
    path.write_bytes(data)
    url = f"http://127.0.0.1:{proxy1.port}"
    out = subprocess.run(["curl", "-sS", "--fail", "-T", str(path), "-H", "Host: localhost",
                          "-H", "Expect: 100-continue", f"{url}/upload"], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["body_sha256"] == hashlib.sha256(data).hexdigest()
    out = subprocess.run(["curl", "-sS", "--fail", "-H", "Host: localhost", "-H", "Transfer-Encoding: chunked",
                          "--data-binary", f"@{path}", f"{url}/chunked-up"], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["body_sha256"] == hashlib.sha256(data).hexdigest()
    out = subprocess.run(["curl", "-sS", "--fail", "-H", "Host: localhost", f"{url}/chunked/100000",
                          f"{url}/close/777", "--http1.0", f"{url}/size/5"], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"c" * 100000 + b"z" * 777 + b"x" * 5


def test_response_heads_in_pieces_and_heads_sharing_a_read(raw_proxy):
    """A head that needs several reads is assembled; a 1xx head and the final answer that came
    in the same read are both forwarded; a body start that came with its head is sent once."""
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r", b"\nhel", b"lo"]

    def respond(conn, data):
        while True:
            if b" /pieces " in data:
                for piece in pieces:
                    conn.sendall(piece)
                    time.sleep(0.05)  # each piece is a read of its own for the proxy
            else:
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            data = read_head(conn)
            if data is None:
                return

    port, raw = raw_proxy(respond)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        reader = sock.makefile("rb")
        for path in (b"/pieces", b"/hints", b"/pieces", b"/hints"):  # the backend connection is reused
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\n" + H + b"\r\n")
            response = read_response(reader)
            if path == b"/hints":
                assert response.status == 103 and response.header("Link") == "</a.css>; rel=preload"
                response = read_response(reader)
                assert response.status == 200 and response.body == b"ok"
            else:
                assert response.status == 200 and response.body == b"hello"
    assert len(raw.received) == 1  # one backend connection carried all four


def test_a_client_that_stops_reading_does_not_stop_the_worker(proxy1):
    """A client that never reads a big download: other clients are served meanwhile."""
    sock, _ = connect(proxy1)
    with sock:
        sock.sendall(b"GET /size/50000000 HTTP/1.1\r\n" + H + b"\r\n")
        time_start = time.monotonic()
        assert request(proxy1.port, "GET", "/size/10").body == b"x" * 10
        assert time.monotonic() - time_start < 2


def test_a_backend_answering_before_reading_the_whole_body_is_heard(raw_proxy):
    """A backend that refuses a big upload (413) and closes without reading it: the client gets
    that answer, not a 502, and the connection then closes (its body was not all read)."""
    def respond(conn, data):
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")

    port, _ = raw_proxy(respond)
    for _ in range(2):
        response = request(port, "POST", "/upload", body=b"u" * (8 << 20))
        assert response.status == 413 and response.body == b"too large"
        assert response.header("Connection") == "close"


def read_until_close(sock) -> tuple[bytes, bytes]:
    """(head, body) of an answer delimited by the end of the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"], ids=["close", "keep-alive"])
def test_a_chunked_answer_reaches_an_http10_client_decoded_and_delimited_by_close(proxy1, connection):
    """RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client, which knows no chunks; the
    end of the connection delimits the body instead (§6.3)."""
    sock, _ = connect(proxy1)
    with sock:
        sock.sendall(b"GET /chunked/2500 HTTP/1.0\r\n" + H + connection + b"\r\n")
        head, body = read_until_close(sock)
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 200 ok"
    assert not any(line.startswith((b"transfer-encoding", b"content-length")) for line in lines), head
    assert b"connection: close" in lines
    assert body == b"c" * 2500


def test_chunk_extensions_trailers_and_split_chunks_are_decoded_for_an_http10_client(raw_proxy):
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n5;ext=\"a b\"\r\nhe",
              b"llo\r\n", b"6\r", b"\n world\r\n0\r\nX-Trailer: dropped\r\n", b"\r\n"]

    def respond(conn, data):
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(0.05)  # each piece is a read of its own for the proxy
        conn.recv(1)  # the proxy closes: an answer to HTTP/1.0 ends its backend connection too

    port, _ = raw_proxy(respond)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n" + H + b"\r\n")
        head, body = read_until_close(sock)
    assert b"x-kept: yes" in head.lower() and b"transfer-encoding" not in head.lower()
    assert body == b"hello world"
