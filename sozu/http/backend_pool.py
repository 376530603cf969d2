"""Idle keep-alive connections to backends, per worker (gevent sockets; worker only).

A connection goes back to the pool only when its response was read to the end and nothing more
arrived. Before one is reused it is checked with a non-blocking MSG_PEEK: a backend that closed
it while idle (keepalive_timeout, a restart) shows end-of-file there, and the connection is
dropped instead of costing a request. A connection idle for less than CHECK_AFTER is reused
without that system call when the request may be repeated: backends rarely close connections
that young, and when one did, the session retries such a request on a fresh connection. A
request that may not be repeated (a POST, a body already read) is always checked. What the check
cannot see (the close racing the reuse) the session handles by retrying requests that may be
repeated.
"""
from __future__ import annotations

import socket
import time
from collections import defaultdict

MAX_IDLE_PER_BACKEND = 64
CHECK_AFTER = 1.0  # s of idleness after which a pooled connection is checked before reuse


class BackendPool:
    def __init__(self, max_idle_per_backend: int = MAX_IDLE_PER_BACKEND):
        self.max_idle = max_idle_per_backend
        self.idle: dict[str, list] = defaultdict(list)

    def get(self, address: str, replayable: bool = False):
        """An idle connection to address, or None. replayable: the request may be sent again
        on a fresh connection if this one turns out closed."""
        connections = self.idle.get(address)
        if connections:
            young = time.monotonic() - CHECK_AFTER if replayable else float("inf")
            while connections:
                connection = connections.pop()
                if connection.idle_since > young or _alive(connection):
                    return connection
                connection.close()
        return None

    def put(self, address: str, connection) -> None:
        connections = self.idle[address]
        if len(connections) >= self.max_idle:
            connections.pop(0).close()
        connection.idle_since = time.monotonic()
        connections.append(connection)

    def drop(self, address: str) -> None:
        for connection in self.idle.pop(address, ()):
            connection.close()

    def close_all(self) -> None:
        for address in list(self.idle):
            self.drop(address)

    def __len__(self) -> int:
        return sum(len(c) for c in self.idle.values())


def _alive(connection) -> bool:
    # A zero timeout makes gevent raise instead of waiting; the session sets its own timeout
    # before using the connection.
    connection.settimeout(0)
    try:
        connection.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read: the normal state of an idle connection
    except OSError:
        return False
    # End-of-file, or bytes nobody asked for: either way this connection is not clean.
    return False
