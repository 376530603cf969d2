"""Two socket calls of the HTTP session, cheaper than gevent's own, and the base of the objects
that stand in for a client socket (worker only, gevent)."""
from __future__ import annotations

import socket
import time


def wait_readable(sock) -> None:
    """Wait until sock can be read, where nothing can have arrived yet. gevent's recv would try
    first, and pay a failed system call and an exception for it, twice per request. A TLS
    socket may hold decrypted bytes already: its recv waits when it must. (gevent has no public
    way to wait on a socket's own watcher; wait_read() would make a watcher per call.)"""
    read_event = getattr(sock, "_read_event", None)
    if read_event is not None:
        sock._wait(read_event)


def send_all(sock, data, more=b"") -> None:
    """data, then more, in one system call when the socket takes it all, the usual case. (gevent's
    own sendall asks the kernel for SO_SNDBUF on every call and arms a Timeout: that doubles the
    system calls of a small exchange.) Two parts (a head and the start of its body) are gathered
    by sendmsg without a copy; a TLS socket, which has no sendmsg, gets them joined."""
    if not more:
        sent = sock.send(data)
    elif hasattr(sock, "sendmsg"):
        sent = sock.sendmsg((data, more))
    else:
        data, more = data + more, b""
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
        sent = len(data)
    if sent < len(data) + len(more):
        sock.sendall(memoryview(more)[sent - len(data):])


def linger(sock, seconds: float) -> None:
    """Half-close, then read and drop what the client still sends, for `seconds` at most:
    closing with unread input makes the kernel reset the connection, and the reset can destroy
    the last answer (an error, a GOAWAY) before the client has read it (nginx's lingering_close)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return
    except OSError:
        pass  # the client is gone, or too slow to go: it had its answer


class StreamSocketCalls:
    """recv_into and send, derived from recv and sendall: what a socket stand-in (a TLS
    connection, an HTTP/2 stream) need not write again. send always takes everything."""

    def recv_into(self, buffer, size: int) -> int:
        data = self.recv(size)
        buffer[:len(data)] = data
        return len(data)

    def send(self, data) -> int:
        self.sendall(data)
        return len(data)
