"""Session deadlines, checked by one greenlet per worker (gevent; worker only).

Theory of operation
-------------------
gevent enforces a socket timeout by arming a Timeout object (a libev timer) for every wait
that would block, and disarming it after: two of them per proxied request, at a cost measured
at a third of a worker's CPU on small requests. Sozu's timeouts are inactivity bounds of whole
seconds, so they need no such precision: a session's sockets have no timeout, and before each
step that may wait it *arms* its deadline (`now + timeout`), which is two attribute writes.

The Deadlines greenlet wakes every TICK. Sessions are filed in buckets by the tick of their
deadline; a session whose deadline moved later is filed again when its bucket comes up, so a
session holds one or two entries, however often it re-arms. Entries are weak references: a
finished session is not kept alive until its bucket comes up. A session past its deadline gets
socket.timeout thrown into its greenlet, where it waits: the error handling at that wait (408,
504, a quiet close) is the one a socket timeout would have reached. A timeout fires at most
TICK late, and never into a later wait than the one it bounded: the throw happens from the
loop's next callback, only if the session's deadline is still the one found past.
"""
from __future__ import annotations

import math
import time
import weakref
from collections import defaultdict

import gevent
from gevent import socket

TICK = 0.1  # s


class Deadlines:
    def __init__(self, tick: float = TICK):
        self.tick = tick
        self.buckets: dict[int, list] = defaultdict(list)

    def arm(self, session, seconds: float) -> None:
        """The session's next waits must end within `seconds` (math.inf: no bound). (The HTTP
        session inlines these three lines: they run several times per request.)"""
        session.deadline = deadline = time.monotonic() + seconds
        if deadline < session.filed_at:  # never true for math.inf
            self.file(session)

    def file(self, session) -> None:
        """File the session in the bucket of its deadline's tick."""
        slot = int(session.deadline / self.tick) + 1
        session.filed_at = slot * self.tick
        self.buckets[slot].append(weakref.ref(session))

    @staticmethod
    def disarm(session) -> None:
        session.deadline = math.inf

    def run(self) -> None:
        slot = int(time.monotonic() / self.tick)
        while True:
            gevent.sleep(self.tick)
            now = time.monotonic()
            current = int(now / self.tick)
            while slot <= current:
                for ref in self.buckets.pop(slot, ()):
                    session = ref()
                    if session is not None:
                        self.check(session, now)
                slot += 1

    def check(self, session, now: float) -> None:
        session.filed_at = math.inf
        deadline = session.deadline
        if deadline <= now:
            greenlet = session.greenlet
            if greenlet is not None and not greenlet.dead:
                gevent.get_hub().loop.run_callback(_expire, session, deadline)
        elif deadline != math.inf:  # moved later since it was filed: file it again
            self.file(session)


def _expire(session, deadline: float) -> None:
    """Throw socket.timeout into the session, unless it moved on since its deadline was found
    past: the wait that deadline bounded may have ended meanwhile (its data came in the same
    turn of the loop), and the next wait, maybe in another state, has its own deadline."""
    greenlet = session.greenlet
    if session.deadline == deadline and not greenlet.dead:
        session.deadline = math.inf
        greenlet.throw(socket.timeout("timed out"))
