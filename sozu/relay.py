"""A two-way byte relay between a client and a backend socket (worker only, gevent).

Theory of operation
-------------------
Used by TCP listeners for whole connections and by HTTP sessions after 101 Switching
Protocols. The relay is two pumps spawned in a per-connection Group (never in the accept pool,
whose `add` blocks when the pool is full), while the calling greenlet supervises them. A pump
reads at most buffer_size bytes and writes them all before it reads again, so a slow reader
makes the proxy hold at most one buffer per direction: the rest waits in the kernel, and the
writer's TCP window pushes back on the sender. End of stream on one side is passed on with
shutdown(SHUT_WR) (half-close) while the other direction goes on; a reset or error on either
side ends the whole relay.

Timeouts: the supervisor ends the relay when the client side has seen no progress (a read from
it, or a write to it completing) for front_timeout, or the backend side for back_timeout. A
pump blocked writing to a reader that does not read makes no progress, so a stuck peer is cut
like an idle one. The sockets themselves must have no timeout.
"""
from __future__ import annotations

import time

import gevent
import gevent.event
import gevent.pool
from gevent import socket


class Relay:
    """Bytes both ways between a client and a backend socket, supervised for idleness."""

    def __init__(self, front, back, buffer_size: int, front_timeout: float, back_timeout: float):
        self.front, self.back = front, back
        self.buffer_size = buffer_size
        self.front_timeout, self.back_timeout = front_timeout, back_timeout
        now = time.monotonic()
        self.front_progress = self.back_progress = now
        self.bytes_in = self.bytes_out = 0  # client -> backend, backend -> client
        self.failed: str | None = None
        self.running = 0  # pumps not finished (a Group forgets a dead greenlet only later)
        self.changed = gevent.event.Event()

    def run(self) -> str:
        """Relay until both directions end; the reason the relay ended."""
        group = gevent.pool.Group()
        self.running = 2
        group.spawn(self._pump, self.front, self.back, True)
        group.spawn(self._pump, self.back, self.front, False)
        try:
            while True:
                if self.failed is not None:
                    return self.failed
                if not self.running:
                    return "closed"
                now = time.monotonic()
                front_left = self.front_progress + self.front_timeout - now
                back_left = self.back_progress + self.back_timeout - now
                if front_left <= 0:
                    return "front timeout"
                if back_left <= 0:
                    return "back timeout"
                self.changed.clear()
                self.changed.wait(min(front_left, back_left))
        finally:
            group.kill(block=False)

    def _pump(self, source, destination, upstream: bool) -> None:
        try:
            self._copy(source, destination, upstream)
        finally:
            self.running -= 1
            self.changed.set()

    def _copy(self, source, destination, upstream: bool) -> None:
        size = self.buffer_size
        try:
            while True:
                data = source.recv(size)
                now = time.monotonic()
                if upstream:
                    self.front_progress = now
                else:
                    self.back_progress = now
                if not data:
                    break
                destination.sendall(data)
                now = time.monotonic()
                if upstream:
                    self.back_progress = now
                    self.bytes_in += len(data)
                else:
                    self.front_progress = now
                    self.bytes_out += len(data)
        except OSError as error:
            self.failed = f"{'client' if upstream else 'backend'} connection failed: {error}"
            return
        try:
            destination.shutdown(socket.SHUT_WR)  # half-close: the other direction goes on
        except OSError:
            pass  # the peer is gone already; the other pump will see it
