"""Bodies are streamed with bounded memory: 200 MiB up and down through one worker (and 50 MiB
chunked both ways and read-until-close) cost a few buffers, however big the transfer (the
worker's VmRSS is sampled while it runs)."""
import socket
import threading
import time

import pytest

from tests.integration.harness import Sozu, ThreadedServer, free_port, http_config, read_response, rss_kib

MIB = 1024 * 1024
SIZE = 200 * MIB
RSS_LIMIT_KIB = 60 * 1024
GROWTH_LIMIT_KIB = 8 * 1024


class SinkSource(ThreadedServer):
    """A fast raw backend: `PUT /sink` (Content-Length or chunked) is read and thrown away,
    `GET /source/N` answers N bytes (Content-Length), `GET /chunks/N` N bytes chunked,
    `GET /close/N` N bytes then close."""

    def handle(self, conn):
        block = b"s" * MIB
        with conn:
            reader = conn.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                headers = {}
                while (h := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                method, target, _ = line.split(b" ")
                if method == b"PUT":
                    if headers.get(b"transfer-encoding") == b"chunked":
                        total = 0
                        while size := int(reader.readline(), 16):
                            total += size
                            while size:
                                size -= len(reader.read(min(size, MIB)))
                            reader.readline()
                        reader.readline()
                    else:
                        total = left = int(headers[b"content-length"])
                        while left:
                            left -= len(reader.read(min(left, MIB)))
                    answer = b"%d" % total
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                    continue
                n = int(target.rsplit(b"/", 1)[1])
                chunked = target.startswith(b"/chunks/")
                close = target.startswith(b"/close/")
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else
                                                       b"Connection: close\r\n\r\n" if close else
                                                       b"Content-Length: %d\r\n\r\n" % n))
                view = memoryview(block)
                while n:
                    piece = min(n, MIB)
                    if chunked:
                        conn.sendall(b"%x\r\n" % piece)
                    conn.sendall(view[:piece])
                    if chunked:
                        conn.sendall(b"\r\n")
                    n -= piece
                if chunked:
                    conn.sendall(b"0\r\n\r\n")
                if close:
                    return

    def stop(self):
        self.sock.close()


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    backend = SinkSource()
    port = free_port()
    proxy = Sozu(tmp, http_config(tmp, port, [backend.port], worker_count=1)).start()
    proxy.port = port
    proxy.pid = proxy.workers()[0]["pid"]
    yield proxy
    proxy.stop()
    backend.stop()


class Sampler:
    def __init__(self, pid):
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join()
        return self.peak


def upload(port, size, chunked=False):
    block = memoryview(b"u" * MIB)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PUT /sink HTTP/1.1\r\nHost: localhost\r\n" + (
            b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % size))
        left = size
        while left:
            piece = min(left, MIB)
            if chunked:
                sock.sendall(b"%x\r\n" % piece)
            sock.sendall(block[:piece])
            if chunked:
                sock.sendall(b"\r\n")
            left -= piece
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        response = read_response(sock.makefile("rb"))
    assert response.status == 200 and int(response.body) == size


def download(port, size, path="/source/"):
    buf = bytearray(MIB)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET %s%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % (path.encode(), size))
        received = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = len(rest)
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            received += n
    return received


def test_200_mib_up_and_down_cost_a_few_buffers(one_worker):
    upload(one_worker.port, 8 * MIB)  # warm up: every code path has run once
    assert download(one_worker.port, 8 * MIB) == 8 * MIB
    baseline = rss_kib(one_worker.pid)
    sampler = Sampler(one_worker.pid)
    started = time.monotonic()
    upload(one_worker.port, SIZE)
    assert download(one_worker.port, SIZE) == SIZE
    upload(one_worker.port, SIZE // 4, chunked=True)
    chunked = download(one_worker.port, SIZE // 4, "/chunks/")
    assert download(one_worker.port, SIZE // 4, "/close/") == SIZE // 4
    elapsed = time.monotonic() - started
    peak = sampler.stop()
    assert chunked > SIZE // 4  # the chunk framing is forwarded as it is
    assert peak < RSS_LIMIT_KIB, f"worker RSS peaked at {peak} KiB"
    assert peak - baseline < GROWTH_LIMIT_KIB, f"RSS grew from {baseline} to {peak} KiB"
    print(f"550 MiB through the proxy in {elapsed:.1f}s; RSS {baseline} -> {peak} KiB")
