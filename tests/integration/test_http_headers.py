"""What the proxy adds and removes: X-Forwarded-*, Forwarded, Sozu-Id (request and response,
unique across workers and restarts), hop-by-hop headers in both directions."""
import http.client
import re
import socket

import pytest

from tests.integration.harness import (
    echo,
    free_port,
    http_config,
    proxy_and_backend,
    read_response,
    request,
)


@pytest.fixture(scope="module")
def proxy1(tmp_path_factory):
    with proxy_and_backend(tmp_path_factory.mktemp("headers"), "h") as proxy:
        yield proxy


def test_forwarding_headers_are_added(proxy1):
    response = request(proxy1.port, "GET", "/fwd")
    seen = echo(response)
    assert seen["header"]("X-Forwarded-For") == ["127.0.0.1"]
    assert seen["header"]("X-Forwarded-Proto") == ["http"]
    assert seen["header"]("X-Forwarded-Port") == [str(proxy1.port)]
    assert seen["header"]("Forwarded") == [f"proto=http;for=127.0.0.1;by=127.0.0.1:{proxy1.port}"]
    request_id = seen["header"]("Sozu-Id")
    assert len(request_id) == 1 and request_id[0]
    assert response.header("Sozu-Id") == request_id[0], "the same id on the request and its response"


def test_forwarding_headers_are_appended_to_the_clients(proxy1):
    seen = echo(request(proxy1.port, "GET", "/", headers={
        "X-Forwarded-For": "203.0.113.7, 198.51.100.1", "Forwarded": "for=203.0.113.7"}))
    assert seen["header"]("X-Forwarded-For") == ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    assert seen["header"]("Forwarded") == [f"for=203.0.113.7, proto=http;for=127.0.0.1;by=127.0.0.1:{proxy1.port}"]


def test_spoofed_proxy_headers_are_replaced(proxy1):
    seen = echo(request(proxy1.port, "GET", "/", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "Sozu-Id": "forged"}))
    assert seen["header"]("X-Forwarded-Proto") == ["http"]
    assert seen["header"]("X-Forwarded-Port") == [str(proxy1.port)]
    assert "forged" not in seen["header"]("Sozu-Id")


def test_hop_by_hop_request_headers_are_removed(proxy1):
    seen = echo(request(proxy1.port, "GET", "/", headers={
        "Connection": "keep-alive, X-Secret, Content-Length", "X-Secret": "1", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Trailer": "X-T", "Proxy-Authorization": "Basic eA==", "Proxy-Connection": "keep-alive",
        "Proxy": "http://evil:3128", "Upgrade": "h2c", "X-Kept": "yes"}))
    names = {name.lower() for name, _ in seen["headers"]}
    for gone in ("connection", "x-secret", "keep-alive", "te", "trailer", "proxy-authorization",
                 "proxy-connection", "proxy", "upgrade"):
        assert gone not in names, gone
    assert seen["header"]("X-Kept") == ["yes"]
    assert seen["header"]("Host") == ["localhost"]


def test_hop_by_hop_response_headers_are_removed(raw_proxy):
    def respond(conn, data):
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                     b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nSozu-Id: forged\r\n"
                     b"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok")

    port, _ = raw_proxy(respond)
    response = request(port, "GET", "/")
    names = {name.lower() for name, _ in response.headers}
    for gone in ("x-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in names, gone
    assert response.header("X-Kept") == "yes" and response.body == b"ok"
    assert response.all("Sozu-Id") != ["forged"] and len(response.all("Sozu-Id")) == 1


def test_sozu_id_is_unique_across_workers_and_restarts(tmp_path, sozu, backend):
    """Both workers are made to serve, whatever the kernel's choice of acceptor: with one
    connection per worker, a worker holding its keep-alive connection is full and stops
    accepting (DESIGN §7), so the second connection can only go to the other worker."""
    b = backend("ids")
    port = free_port()
    config = http_config(tmp_path, port, [b.port], worker_count=2, max_connections=1)

    def ids(per_connection: int) -> list[str]:
        first, second = (http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2))
        try:
            # The first answer arrives before the second connection opens: its worker is full then.
            seen = [request(port, "GET", "/", conn=first).header("Sozu-Id")]
            seen += [request(port, "GET", "/", conn=conn).header("Sozu-Id")
                     for conn in (second, first) for _ in range(per_connection)]
            return seen
        finally:
            first.close()
            second.close()

    first_run = sozu(config)
    before = ids(20)
    assert len(set(before)) == len(before) == 41
    prefixes = {i.rsplit("-", 1)[0] for i in before}
    assert len(prefixes) == 2, f"one prefix per worker, and both served: {prefixes}"
    first_run.stop()
    sozu(config, name="again")
    after = ids(10)
    assert len(set(after)) == len(after) == 21 and not set(before) & set(after)
    assert all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", i) for i in before + after)


def test_http10_request_is_forwarded_as_http10_with_close(proxy1):
    with socket.create_connection(("127.0.0.1", proxy1.port), timeout=5) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\nHost: localhost\r\n\r\n")
        reader = sock.makefile("rb")
        response = read_response(reader)
        assert reader.read() == b"", "an HTTP/1.0 client without keep-alive is closed after its answer"
    import json
    seen = json.loads(response.body)
    assert seen["version"] == "HTTP/1.0"
    assert response.status == 200 and response.header("Connection") == "close"


def test_informational_answers(raw_proxy):
    """103 Early Hints reaches an HTTP/1.1 client; a 100 the client did not ask for (sozu
    answers Expect itself) and any 1xx to an HTTP/1.0 client are dropped."""
    def respond(conn, data):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port, _ = raw_proxy(respond)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        hints = read_response(reader)
        final = read_response(reader)
    assert hints.status == 103 and hints.header("Link") == "</s.css>; rel=preload"
    assert final.status == 200 and final.body == b"ok"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        only = read_response(reader)
    assert only.status == 200 and only.body == b"ok"
