"""The Prometheus endpoint: GET /metrics on the `[metrics] prometheus` address (master only).

Theory of operation
-------------------
A listening socket served by the master's selectors loop, like the command socket: every
connection is non-blocking and has a deadline, so a client that sends nothing, or reads nothing,
costs only its own connection. A connection reads one request head (at most MAX_HEAD bytes);
GET /metrics asks the workers for their snapshots (`collect`, the same fan-out as `sozuctl
metrics`) and answers their merged figures in the Prometheus text format (sozu.prometheus)
once they answered or the command timeout passed; anything else gets 404 or 405. Every answer
closes the connection.

An upgrade hands the listening socket over, as it does the listeners' (sozu.upgrade): the new
master inherits it (SOZU_METRICS_FD, `address=fd`) and accepts on it only once it serves (its
workers run), and the old master stops accepting then. Connections never meet a closed port
nor a half-started generation: the kernel queues them in the one backlog throughout. A request
that reaches the old master after that (on a connection it accepted just before) is answered
503 with Retry-After: its draining workers' partial figures would look like counter resets.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import time

from sozu.address import sockaddr
from sozu.listeners import decode_fds

log = logging.getLogger("sozu.metrics")

ENV_METRICS_FD = "SOZU_METRICS_FD"

MAX_HEAD = 8192
CLIENT_TIMEOUT = 10.0  # s a metrics client has to send its request and read the answer


class _Connection:
    __slots__ = ("sock", "inbox", "outbox", "deadline", "waiting", "closed")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = b""
        self.deadline = now + CLIENT_TIMEOUT
        self.waiting = False  # for the workers' snapshots
        self.closed = False


class MetricsServer:
    def __init__(self, address: str, sock: socket.socket, selector: selectors.BaseSelector,
                 collect, render):
        """sock: listening_socket(address). collect(on_done) gathers the figures and calls
        on_done(figures); render(figures) gives the text. Connections are accepted from
        serve() on."""
        self.address = address
        self.selector = selector
        self.collect = collect
        self.render = render
        self.connections: dict[int, _Connection] = {}
        self.sock: socket.socket | None = sock
        self.accepting = False
        self.retired = False  # a newer master serves: its figures are the ones to read

    def serve(self) -> None:
        if self.sock is not None and not self.accepting:
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)
            self.accepting = True
            log.info("Prometheus metrics on http://%s/metrics", self.address)

    def stop_accepting(self) -> None:
        """A newer master serves the endpoint (it holds the same socket): this one answers only
        the connections it accepted already."""
        self.retired = True
        if self.sock is not None:
            if self.accepting:
                self.selector.unregister(self.sock)
            self.sock.close()  # this process's descriptor only: the socket lives on in the next
            self.sock, self.accepting = None, False

    def handover(self) -> dict[str, str]:
        """The environment that gives the socket to a new master (sozu.upgrade)."""
        if self.sock is None:
            return {}
        self.sock.set_inheritable(True)
        return {ENV_METRICS_FD: f"{self.address}={self.sock.fileno()}"}

    def close_in_child(self) -> None:
        """A forked worker's copies go, the master's stay. Closed without unregistering: the
        child shares the master's epoll instance, and unregistering there is unregistering
        in the master."""
        for connection in self.connections.values():
            connection.sock.close()
        if self.sock is not None:
            self.sock.close()

    def expire(self, now: float) -> None:
        for connection in list(self.connections.values()):
            if now >= connection.deadline:
                self._drop(connection)

    def _accept(self, mask) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("metrics accept failed: %s", error)
                return
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic())
            self.connections[sock.fileno()] = connection
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=connection: self._on_ready(c, m))

    def _on_ready(self, connection: _Connection, mask) -> None:
        """The metrics edge: whatever a client does, it ends its own connection only."""
        try:
            if mask & selectors.EVENT_READ and not connection.outbox and not connection.waiting:
                self._read(connection)
            if mask & selectors.EVENT_WRITE:
                self._write(connection)
        except OSError:
            self._drop(connection)

    def _read(self, connection: _Connection) -> None:
        data = connection.sock.recv(4096)
        if not data:
            self._drop(connection)
            return
        connection.inbox += data
        end = connection.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.inbox) > MAX_HEAD:
                self._answer(connection, 431, b"request head too large\n")
            return
        method, _, rest = bytes(connection.inbox[:end]).partition(b" ")
        target = rest.split(b" ", 1)[0]
        if target.split(b"?", 1)[0] != b"/metrics":
            self._answer(connection, 404, b"not found: the metrics are at /metrics\n")
        elif method not in (b"GET", b"HEAD"):
            self._answer(connection, 405, b"only GET /metrics\n", b"Allow: GET, HEAD\r\n")
        elif self.retired:  # its workers drain: partial figures would read as counter resets
            self._answer(connection, 503, b"this generation is retiring: ask again\n",
                         b"Retry-After: 0\r\nContent-Type: text/plain; charset=utf-8\r\n")
        else:
            connection.waiting = True
            head_only = method == b"HEAD"
            self.collect(lambda figures: self._answer_figures(connection, figures, head_only))

    def _answer_figures(self, connection: _Connection, figures, head_only: bool) -> None:
        if connection.closed:
            return  # the client went away, or its deadline passed, meanwhile
        connection.waiting = False
        body = self.render(figures).encode()
        self._answer(connection, 200, body, b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
                     head_only)

    def _answer(self, connection: _Connection, status: int, body: bytes, extra: bytes = b"",
                head_only: bool = False) -> None:
        reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed",
                  431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}[status]
        if not extra:
            extra = b"Content-Type: text/plain; charset=utf-8\r\n"
        connection.outbox = (b"HTTP/1.1 %d %s\r\n" % (status, reason) + extra +
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) +
                             (b"" if head_only else body))
        self.selector.modify(connection.sock, selectors.EVENT_WRITE,
                             lambda m, c=connection: self._on_ready(c, m))
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except BlockingIOError:
            return
        connection.outbox = connection.outbox[sent:]
        if not connection.outbox:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self.connections.pop(connection.sock.fileno(), None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            log.debug("metrics client not registered")
        connection.sock.close()


def listening_socket(address: str | None, environ=os.environ) -> socket.socket | None:
    """The socket for `address`: the one a previous master handed over when it listened on the
    same address, else a new one (None without an address). A handed-over socket for another
    address (the file changed) is closed. The variable is removed, so that no worker or later
    upgrade sees it."""
    inherited = decode_fds(environ.pop(ENV_METRICS_FD, ""))
    sock = None
    for old_address, fd in inherited.items():
        if old_address == address:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
        else:
            os.close(fd)
    if sock is None and address is not None:
        sock = _bind(address)
    return sock


def _bind(address: str) -> socket.socket:
    """SO_REUSEPORT: a master upgraded from a version that handed no socket over binds beside
    the old one, which still listens until it retires."""
    family, addr = sockaddr(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
