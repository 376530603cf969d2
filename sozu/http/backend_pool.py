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

Connections idle for longer than IDLE_TIMEOUT are closed, checked every PRUNE_EVERY seconds by
`put`: without that, the connections to a backend that was removed (never asked for again) would
stay open for the life of the worker, up to max_idle for every address it ever used.
"""
from __future__ import annotations

import socket
import time
from collections import defaultdict

MAX_IDLE_PER_BACKEND = 64
CHECK_AFTER = 1.0  # s of idleness after which a pooled connection is checked before reuse
IDLE_TIMEOUT = 60.0  # s: an idle connection older than this is closed (nginx's keepalive_timeout)
PRUNE_EVERY = 10.0  # s between two searches for such connections


class BackendPool:
    def __init__(self, max_idle_per_backend: int = MAX_IDLE_PER_BACKEND):
        self.max_idle = max_idle_per_backend
        self.idle: dict[str, list] = defaultdict(list)
        self.next_prune = time.monotonic() + PRUNE_EVERY

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
        connection.idle_since = now = time.monotonic()
        connections.append(connection)
        if now >= self.next_prune:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Close the connections idle for longer than IDLE_TIMEOUT (the oldest come first)."""
        self.next_prune = now + PRUNE_EVERY
        oldest_kept = now - IDLE_TIMEOUT
        for address, connections in list(self.idle.items()):
            stale = 0
            while stale < len(connections) and connections[stale].idle_since < oldest_kept:
                connections[stale].close()
                stale += 1
            del connections[:stale]
            if not connections:
                del self.idle[address]

    def drop(self, address: str) -> None:
        for connection in self.idle.pop(address, ()):
            connection.close()

    def close_all(self) -> None:
        for address in list(self.idle):
            self.drop(address)

    def __len__(self) -> int:
        return sum(len(c) for c in self.idle.values())


def _alive(connection) -> bool:
    # A zero timeout makes gevent raise instead of waiting.
    connection.settimeout(0)
    try:
        connection.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        connection.settimeout(None)  # the session bounds its waits with deadlines
        return True  # nothing to read: the normal state of an idle connection
    except OSError:
        return False
    # End-of-file, or bytes nobody asked for: either way this connection is not clean.
    return False
