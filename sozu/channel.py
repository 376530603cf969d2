"""The master <-> worker channel: one unix socketpair per worker, NUL-framed JSON both ways.

The master's end is non-blocking and driven by its selectors loop: it queues outgoing bytes and
writes what the socket takes, so a stuck worker can never block the master. The worker's end is a
gevent socket read by one greenlet. Listening sockets added at runtime travel as SCM_RIGHTS
ancillary data attached to the message that names them (`"fds": N` in the message).

Messages are the command socket's own requests and answers (sozu.messages), so an order travels
from sozuctl to every worker without being translated.
"""
from __future__ import annotations

import array
import socket

from sozu.messages import Decoder, encode

MAX_FDS_PER_MESSAGE = 16


class ChannelClosed(Exception):
    pass


class _Framing:
    def __init__(self, sock, max_size: int):
        self.sock = sock
        self.decoder = Decoder(max_size)
        self.fds: list[int] = []  # received descriptors, in order, taken by messages naming them

    def _recv(self, size: int) -> bytes:
        data, ancdata, _flags, _addr = self.sock.recvmsg(size, socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        return data

    def take_fds(self, count: int) -> list[int]:
        taken, self.fds = self.fds[:count], self.fds[count:]
        return taken


class MasterChannel(_Framing):
    """The master's end. `receive()` when readable, `flush()` when `wants_write`."""

    def __init__(self, sock, max_size: int):
        sock.setblocking(False)
        super().__init__(sock, max_size)
        self.outbox = bytearray()

    def send(self, message: dict, fds: tuple[int, ...] = ()) -> None:
        data = encode(message)
        if fds:
            # Ancillary data rides with the first byte it is sent with: flush what is queued so
            # that the descriptors arrive attached to this very message.
            self.flush_blocking()
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            data = data[sent:]
        self.outbox += data
        self.flush()

    @property
    def wants_write(self) -> bool:
        return bool(self.outbox)

    def flush(self) -> None:
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            except OSError as error:
                raise ChannelClosed(str(error)) from None
            del self.outbox[:sent]

    def flush_blocking(self) -> None:
        if self.outbox:
            self.sock.setblocking(True)
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(self.outbox)
                self.outbox.clear()
            except OSError as error:
                raise ChannelClosed(str(error)) from None
            finally:
                self.sock.setblocking(False)

    def receive(self) -> list:
        messages = []
        while True:
            try:
                data = self._recv(65536)
            except BlockingIOError:
                return messages
            except OSError as error:
                raise ChannelClosed(str(error)) from None
            if not data:
                raise ChannelClosed("worker closed its channel")
            messages += self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()


class WorkerChannel(_Framing):
    """The worker's end, on a gevent socket: blocking calls that yield to other greenlets."""

    def send(self, message: dict) -> None:
        self.sock.sendall(encode(message))

    def receive(self) -> list:
        """Wait for at least one message; raises ChannelClosed when the master is gone."""
        while True:
            data = self._recv(65536)
            if not data:
                raise ChannelClosed("master closed the channel")
            messages = self.decoder.feed(data)
            if messages:
                return messages
