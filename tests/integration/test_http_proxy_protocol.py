"""send_proxy on HTTP applications: each backend connection starts with a PROXY header naming
the client, and is never shared with another client through the pool."""
import http.client

import pytest

from sozu import proxy_protocol
from tests.integration.harness import RawBackend, free_port, http_apps_config, wait_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def raw_backend():
    """Records each connection's bytes up to the end of its first request head. (The v2
    signature itself holds a CRLF CRLF, so the head ends after the request line.)"""
    def respond(conn, data):
        while b" HTTP/1.1\r\n" not in data or not data.endswith(b"\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        backend.heads.append(data)
        conn.sendall(OK)

    backend = RawBackend(respond)
    backend.heads = []
    yield backend
    backend.stop()


@pytest.mark.parametrize("version", [2, 1])
def test_each_backend_connection_starts_with_the_clients_proxy_header(tmp_path, sozu, raw_backend, version):
    port = free_port()
    s = sozu(http_apps_config(tmp_path, port, {"app": {
        "fronts": [("localhost", "")], "backends": [f"127.0.0.1:{raw_backend.port}"],
        "extra": f"send_proxy = true\nsend_proxy_version = {version}"}}))
    for _ in range(3):  # three requests on one keep-alive client connection
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/", headers={"Host": "localhost"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
        conn.close()
    wait_for(lambda: len(raw_backend.heads) == 3, what="three backend connections")
    for received in raw_backend.heads:
        parsed = proxy_protocol.parse(received)
        assert parsed is not None, received[:60]
        header, used = parsed
        assert header.version == version
        assert header.source[0] == "127.0.0.1" and tuple(header.destination) == ("127.0.0.1", port)
        assert received[used:].startswith(b"GET / HTTP/1.1\r\n")
    assert s.process.poll() is None
