"""Idle keep-alive connections to backends, per worker (gevent sockets; worker only).

A connection goes back to the pool only when its response was read to the end and nothing more
arrived. Before every reuse it is checked with a non-blocking MSG_PEEK: a backend that closed it
while idle (keepalive_timeout, a restart) shows end-of-file there, and a backend that sent bytes
after its response (a second response, a HEAD answer's body) shows them; either way the
connection is closed instead of reused. Bytes that arrived while nobody asked for anything
answer no request: on a reused connection they would be read as the answer to the next one,
whichever client sent it (response-queue poisoning). The check costs one system call per reuse.
What it cannot see (a close racing the reuse) the session handles by retrying requests that
may be repeated.

Connections idle for longer than IDLE_TIMEOUT are closed, checked every PRUNE_EVERY seconds by
`put`: without that, the connections to a backend that was removed (never asked for again) would
stay open for the life of the worker, up to max_idle for every address it ever used.
"""
from __future__ import annotations

import socket
import time
from collections import defaultdict

MAX_IDLE_PER_BACKEND = 64
IDLE_TIMEOUT = 60.0  # s: an idle connection older than this is closed (nginx's keepalive_timeout)
PRUNE_EVERY = 10.0  # s between two searches for such connections


class BackendPool:
    def __init__(self, max_idle_per_backend: int = MAX_IDLE_PER_BACKEND):
        self.max_idle = max_idle_per_backend
        self.idle: dict[str, list] = defaultdict(list)
        self.next_prune = time.monotonic() + PRUNE_EVERY

    def get(self, address: str):
        """An idle connection to address that the backend neither closed nor wrote to, or None."""
        connections = self.idle.get(address)
        while connections:
            connection = connections.pop()
            if _clean(connection):
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


def _clean(connection) -> bool:
    """Nothing to read: the normal state of an idle connection."""
    connection.settimeout(0)  # a zero timeout makes gevent raise instead of waiting
    try:
        connection.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        connection.settimeout(None)  # the session bounds its waits with deadlines
        return True
    except OSError:
        return False
    return False  # end-of-file, or bytes nobody asked for
