"""Slow clients cannot pin a worker: slowloris (a request head sent a few bytes at a
time, forever) and slow readers (a large answer never read) against ONE worker, while a normal
client keeps being served. The 1,000-connection slowhttptest run is in bench/soak.py."""
from __future__ import annotations

import socket
import threading
import time

from tests.integration.harness import free_port, http_config, wait_for
from tests.integration.load import Load, LoadClient

SLOWLORIS = 200
SLOW_READERS = 20


class Slowloris(threading.Thread):
    """Opens n connections, sends each an incomplete request head, then one more header line
    every `every` seconds, as the attack does; records how each connection ended."""

    def __init__(self, port: int, n: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.port, self.n, self.every = port, n, every
        self.socks: list[socket.socket] = []
        self.answers: dict[int, bytes] = {}
        self.running = threading.Event()
        self.running.set()
        self.opened = threading.Event()

    def run(self) -> None:
        for _ in range(self.n):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            sock.setblocking(False)
            self.socks.append(sock)
        self.opened.set()
        i = 0
        while self.running.is_set():
            for index, sock in enumerate(self.socks):
                if index in self.answers:
                    continue
                try:
                    data = sock.recv(65536)
                    self.answers[index] = data  # b"" too: the server closed it
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.answers[index] = b"reset"
                    continue
                try:
                    sock.send(b"X-a-%d: b\r\n" % i)
                except OSError:
                    self.answers[index] = b"reset"
            i += 1
            time.sleep(self.every)

    def stop(self) -> None:
        self.running.clear()
        self.join(5)
        for sock in self.socks:
            sock.close()


def test_slowloris_and_slow_readers_do_not_pin_a_worker(tmp_path, sozu, backend):
    b = backend("b1")
    port = free_port()
    text = http_config(tmp_path, port, [b.port], worker_count=1).replace("request_timeout = 3", "request_timeout = 2")
    s = sozu(text)
    readers = []
    for _ in range(SLOW_READERS):  # ask for 4 MB each and read nothing
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /size/4000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        readers.append(sock)
    attack = Slowloris(port, SLOWLORIS)
    attack.start()
    assert attack.opened.wait(10)
    started = time.monotonic()
    clients = (LoadClient(port, name="keep-alive"), LoadClient(port, keep_alive=False, name="new-connection"))
    try:
        with Load(*clients) as load:
            time.sleep(3.5)
        # request_timeout (2 s) after its first byte, every slowloris connection got its 408
        wait_for(lambda: len(attack.answers) == SLOWLORIS, 3, what="every slowloris connection to end")
    finally:
        attack.stop()
        for sock in readers:
            sock.close()
    print(load.summary())
    total = load.ok + len(load.failures)
    assert load.ok >= 0.99 * total and load.ok > 50, load.summary() + "\n".join(load.failures[:5])
    for client in clients:
        client.latencies.sort()
        assert client.latencies[int(len(client.latencies) * 0.99) - 1] < 0.5, client.summary()
    ended = list(attack.answers.values())
    assert sum(a.startswith(b"HTTP/1.1 408") for a in ended) == SLOWLORIS, ended[:3]
    assert time.monotonic() - started < 8
    wait_for(lambda: s.order("METRICS", None)["data"]["workers"]["0"]["active_connections"] == 0, 5,
             what="the slow connections to be gone from the worker")
