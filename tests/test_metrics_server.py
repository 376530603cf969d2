"""The Prometheus endpoint's socket across an upgrade, without a master: a selectors loop of
the test's own drives a MetricsServer on a loopback port (sozu.metrics_server)."""
import selectors
import socket
import time

from sozu.metrics_server import ENV_METRICS_FD, MetricsServer, listening_socket


def serve_until(selector, done, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the metrics server did not answer in time"
        for key, mask in selector.select(0.05):
            key.data(mask)


def answer(selector, client: socket.socket) -> bytes:
    client.setblocking(False)
    received = bytearray()

    def closed() -> bool:
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            return False
        received.extend(chunk)
        return not chunk
    serve_until(selector, closed)
    return bytes(received)


def test_a_handed_over_socket_is_the_same_and_a_retired_server_answers_503():
    selector = selectors.DefaultSelector()
    sock = listening_socket("127.0.0.1:0", environ={})
    address = "127.0.0.1:%d" % sock.getsockname()[1]
    old = MetricsServer(address, sock, selector, lambda on_done: on_done("figures"),
                        lambda figures: f"sozu_{figures} 1\n")
    old.serve()
    with socket.create_connection(sock.getsockname()) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer(selector, client).endswith(b"\r\n\r\nsozu_figures 1\n")

    environ = old.handover()  # what an upgrade puts in the new master's environment
    assert environ == {ENV_METRICS_FD: f"{address}={sock.fileno()}"}
    inherited = listening_socket(address, environ)
    assert environ == {}  # taken: no worker or later upgrade sees it
    assert inherited.getsockname() == sock.getsockname() and inherited.fileno() == sock.fileno()
    inherited.detach()  # one process here: the old server's socket object keeps the descriptor

    with socket.create_connection(sock.getsockname()) as late:
        serve_until(selector, lambda: old.connections)  # accepted by the old master
        old.stop_accepting()  # the new one serves from now on
        late.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        text = answer(selector, late)
    assert text.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 0\r\n" in text
    selector.close()


def test_a_handed_over_socket_for_another_address_is_closed_and_a_new_one_bound():
    old = listening_socket("127.0.0.1:0", environ={})
    environ = {ENV_METRICS_FD: f"127.0.0.1:1={old.detach()}"}
    sock = listening_socket("127.0.0.1:0", environ)
    try:
        assert environ == {} and sock.getsockname()[1] != 1
    finally:
        sock.close()
