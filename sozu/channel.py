"""The master <-> worker channel: one unix socketpair per worker, NUL-framed JSON both ways.

The master's end is non-blocking and driven by its selectors loop: it queues outgoing bytes and
writes what the socket takes, so a stuck worker can never block the master. The worker's end is a
gevent socket read by one greenlet. Listening sockets added at runtime travel as SCM_RIGHTS
ancillary data attached to the message that names them (`"fds": N` in the message): the master
queues a duplicate of each descriptor with the offset of that message in its outbox, and sends it
with the message's first byte, whenever the socket takes it.

Messages are the command socket's own requests and answers (sozu.messages), so an order travels
from sozuctl to every worker without being translated.
"""
from __future__ import annotations

import array
import os
import socket

from sozu.messages import Decoder, encode

MAX_FDS_PER_MESSAGE = 16
# Both ends are sozu: the limit only stops a runaway. It is not the command socket's limit on a
# request, which a worker's answer (a QUERY of a large state) or an order read from a state file
# may well exceed: over it, the message would be lost and the channel's stream broken.
MIN_CHANNEL_MESSAGE_SIZE = 256 << 20


class ChannelClosed(Exception):
    pass


class _Framing:
    def __init__(self, sock, max_size: int):
        self.sock = sock
        self.decoder = Decoder(max(max_size, MIN_CHANNEL_MESSAGE_SIZE))
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
        # [offset in outbox, descriptors]: ancillary data rides with the first byte it is sent
        # with, so each set goes with the first byte of its message, and never earlier.
        self.fd_marks: list[list] = []

    def send(self, message: dict, fds: tuple[int, ...] = ()) -> None:
        if fds:  # duplicates: the listener may be closed before the worker can take it
            self.fd_marks.append([len(self.outbox), [os.dup(fd) for fd in fds]])
        self.outbox += encode(message)
        self.flush()

    @property
    def wants_write(self) -> bool:
        return bool(self.outbox)

    def flush(self) -> None:
        while self.outbox:
            marks = self.fd_marks
            try:
                if marks and marks[0][0] == 0:
                    fds = array.array("i", marks[0][1])
                    sent = self.sock.sendmsg([self.outbox], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    _close_all(marks.pop(0)[1])
                else:  # up to the next message with descriptors, which must start a send
                    sent = self.sock.send(self.outbox[:marks[0][0]] if marks else self.outbox)
            except BlockingIOError:
                return
            except OSError as error:
                raise ChannelClosed(str(error)) from None
            del self.outbox[:sent]
            for mark in marks:
                mark[0] -= sent

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
        for _, fds in self.fd_marks:
            _close_all(fds)
        self.fd_marks.clear()
        self.sock.close()


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass  # already closed: nothing to release


class WorkerChannel(_Framing):
    """The worker's end, on a gevent socket: blocking calls that yield to other greenlets.
    Several greenlets send (answers, events from sessions): `lock` (a gevent lock, given by the
    worker since this module stays free of gevent) keeps each message whole when the socket
    buffer is full and a sendall yields halfway."""

    def __init__(self, sock, max_size: int, lock):
        super().__init__(sock, max_size)
        self.lock = lock

    def send(self, message: dict) -> None:
        data = encode(message)
        with self.lock:
            self.sock.sendall(data)

    def receive(self) -> list:
        """Wait for at least one message; raises ChannelClosed when the master is gone."""
        while True:
            data = self._recv(65536)
            if not data:
                raise ChannelClosed("master closed the channel")
            messages = self.decoder.feed(data)
            if messages:
                return messages
