"""`Upgrade: websocket`: the handshake is forwarded with its Upgrade/Connection headers, a 101
turns the connection into a two-way byte tunnel, alive while either side talks; a backend that
declines answers as usual; a 101 nobody asked for is a 502."""
import os
import socket
import threading
import time

import pytest

from tests.integration.harness import RawBackend, Sozu, free_port, http_apps_config, read_response

HANDSHAKE = (b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


class Tunnel:
    """What the backend side of tunnels saw."""

    def __init__(self):
        self.heads: list[bytes] = []
        self.closed_by_proxy = threading.Event()


def echo_backend(tunnel: Tunnel):
    def respond(conn, data):
        head, _, early = data.partition(b"\r\n\r\n")
        tunnel.heads.append(head)
        path = head.split(b" ")[1]
        if path == b"/decline":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndeclined")
            return
        if path == b"/unasked" or b"upgrade: websocket" not in head.lower():
            conn.sendall(SWITCH)
            return
        if path == b"/push":
            conn.sendall(SWITCH)
            for i in range(8):  # 2.4 s of server push, longer than front_timeout (1 s)
                conn.sendall(b"%d" % i)
                time.sleep(0.3)
            conn.settimeout(10)
            if conn.recv(1) == b"":
                tunnel.closed_by_proxy.set()
            return
        if path == b"/hangup":
            conn.sendall(SWITCH + b"bye")
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            if conn.recv(1) == b"":
                tunnel.closed_by_proxy.set()
            return
        conn.sendall(SWITCH + early.upper())
        conn.settimeout(10)
        while True:
            data = conn.recv(65536)
            if not data:
                tunnel.closed_by_proxy.set()
                return
            conn.sendall(data.upper())
    return respond


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("websocket")
    tunnel = Tunnel()
    raw = RawBackend(echo_backend(tunnel))
    port = free_port()
    proxy = Sozu(tmp, http_apps_config(tmp, port, {"ws": {"fronts": [("ws.test", "")],
                                                          "backends": [f"127.0.0.1:{raw.port}"]}},
                                       timeouts="front_timeout = 1\nrequest_timeout = 2\nback_timeout = 2\n"
                                                "connect_timeout = 1")).start()
    proxy.port, proxy.tunnel = port, tunnel
    yield proxy
    proxy.stop()
    raw.stop()


def handshake(ws, path: bytes = b"/chat", early: bytes = b""):
    sock = socket.create_connection(("127.0.0.1", ws.port), timeout=5)
    sock.sendall(HANDSHAKE.replace(b"/chat", path) + early)
    return sock


def read_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_head(sock) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(head)
        head += chunk
    return head


def test_the_handshake_is_forwarded_and_answered(ws):
    sock = handshake(ws)
    with sock:
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101")
    lines = head.lower().split(b"\r\n")
    assert b"upgrade: websocket" in lines and b"connection: upgrade" in lines
    assert any(line.startswith(b"sozu-id: ") for line in lines)
    sent = ws.tunnel.heads[-1].lower().split(b"\r\n")
    assert b"upgrade: websocket" in sent and b"connection: upgrade" in sent
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in sent


def test_bytes_flow_both_ways(ws):
    sock = handshake(ws, early=b"early bytes ")
    with sock:
        read_head(sock)
        assert read_exactly(sock, 12) == b"EARLY BYTES "
        for message in (b"hello", b"world" * 1000):
            sock.sendall(message)
            assert read_exactly(sock, len(message)) == message.upper()
        big = os.urandom(1 << 20).hex().encode()[: 1 << 20]
        threading.Thread(target=sock.sendall, args=(big,), daemon=True).start()
        assert read_exactly(sock, len(big)) == big.upper()


def test_the_tunnel_lives_while_one_side_talks_and_ends_when_both_are_silent(ws):
    ws.tunnel.closed_by_proxy.clear()
    sock = handshake(ws, b"/push")
    with sock:
        read_head(sock)
        assert read_exactly(sock, 8) == b"01234567", "server push longer than front_timeout went through"
        started = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(1) == b"", "then silence both ways: closed"
        assert 0.7 < time.monotonic() - started < 2.5
    assert ws.tunnel.closed_by_proxy.wait(5)


def test_a_backend_hanging_up_ends_the_tunnel(ws):
    ws.tunnel.closed_by_proxy.clear()
    sock = handshake(ws, b"/hangup")
    with sock:
        read_head(sock)
        assert read_exactly(sock, 3) == b"bye"
        assert sock.recv(1) == b""
    assert ws.tunnel.closed_by_proxy.wait(5)


def test_a_client_hanging_up_ends_the_tunnel(ws):
    ws.tunnel.closed_by_proxy.clear()
    sock = handshake(ws)
    with sock:
        read_head(sock)
        sock.sendall(b"x")
        assert read_exactly(sock, 1) == b"X"
    assert ws.tunnel.closed_by_proxy.wait(5)


def test_a_declined_upgrade_is_an_ordinary_response(ws):
    sock = handshake(ws, b"/decline")
    with sock, sock.makefile("rb") as reader:
        response = read_response(reader)
        assert response.status == 200 and response.body == b"declined"
        sock.sendall(b"GET /decline HTTP/1.1\r\nHost: ws.test\r\n\r\n")
        assert read_response(reader).body == b"declined", "the connection is still HTTP"


def test_a_101_nobody_asked_for_is_a_502(ws):
    with socket.create_connection(("127.0.0.1", ws.port), timeout=5) as sock:
        sock.sendall(b"GET /unasked HTTP/1.1\r\nHost: ws.test\r\n\r\n")
        response = read_response(sock.makefile("rb"))
    assert response.status == 502


def test_upgrade_is_ignored_in_http10(ws):
    with socket.create_connection(("127.0.0.1", ws.port), timeout=5) as sock:
        sock.sendall(b"GET /chat HTTP/1.0\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        response = read_response(sock.makefile("rb"))
    assert response.status == 502, "the backend's 101 answers a request that did not ask to upgrade"
    assert b"upgrade" not in ws.tunnel.heads[-1].lower()


H2C = (b"GET %s HTTP/1.1\r\nHost: ws.test\r\nUpgrade: %s\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")


@pytest.mark.parametrize("token", [b"h2c", b"H2C", b"TLS/1.2", b"websocketx"])
def test_an_upgrade_other_than_websocket_is_a_plain_request(ws, token):
    """Only websocket tunnels are proxied: any other upgrade (h2c would give the client a raw
    tunnel past routing) reaches the backend as a plain request, which it answers as such."""
    with socket.create_connection(("127.0.0.1", ws.port), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(H2C % (b"/decline", token))
        response = read_response(reader)
        assert (response.status, response.body) == (200, b"declined")
        sent = ws.tunnel.heads[-1].lower()
        assert b"upgrade" not in sent and b"http2-settings" not in sent, sent
        sock.sendall(b"GET /decline HTTP/1.1\r\nHost: ws.test\r\n\r\n")
        assert read_response(reader).body == b"declined", "the connection is still HTTP"


def test_a_101_to_an_upgrade_other_than_websocket_is_a_502(ws):
    with socket.create_connection(("127.0.0.1", ws.port), timeout=5) as sock:
        sock.sendall(H2C % (b"/chat", b"h2c"))
        response = read_response(sock.makefile("rb"))
    assert response.status == 502, "the backend's 101 answers a request that did not ask for a websocket"
    assert b"upgrade" not in ws.tunnel.heads[-1].lower()


@pytest.mark.parametrize("token", [b"WebSocket", b"h2c, websocket"])
def test_the_websocket_token_is_recognized_in_any_case_and_among_others(ws, token):
    with socket.create_connection(("127.0.0.1", ws.port), timeout=5) as sock:
        sock.sendall(HANDSHAKE.replace(b"Upgrade: websocket", b"Upgrade: " + token))
        assert read_head(sock).startswith(b"HTTP/1.1 101")
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"PING"
    sent = ws.tunnel.heads[-1].lower().split(b"\r\n")
    assert b"upgrade: websocket" in sent and b"connection: upgrade" in sent
