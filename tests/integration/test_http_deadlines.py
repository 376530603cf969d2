"""The Deadlines greenlet, in process: a session waiting past its deadline gets socket.timeout
where it waits; re-arming later postpones it; a finished session is not kept alive."""
import gc
import math
import time
import weakref

import pytest

gevent = pytest.importorskip("gevent")
from gevent import socket as gsocket  # noqa: E402

from sozu.http.deadlines import Deadlines  # noqa: E402


class Waiter:
    """Stands for a session: waits on a socket that never receives anything."""

    def __init__(self, deadlines, seconds, rearm_after=None, rearm_seconds=None):
        self.deadline = self.filed_at = math.inf
        self.greenlet = None
        self.deadlines, self.seconds = deadlines, seconds
        self.rearm_after, self.rearm_seconds = rearm_after, rearm_seconds

    def run(self):
        self.greenlet = gevent.getcurrent()
        a, b = gsocket.socketpair()
        start = time.monotonic()
        try:
            self.deadlines.arm(self, self.seconds)
            if self.rearm_after is not None:
                gevent.sleep(self.rearm_after)
                self.deadlines.arm(self, self.rearm_seconds)
            a.recv(1)
        except gsocket.timeout:
            return time.monotonic() - start
        finally:
            a.close()
            b.close()


@pytest.fixture
def deadlines():
    d = Deadlines()
    runner = gevent.spawn(d.run)
    yield d
    runner.kill()


def test_a_wait_past_its_deadline_gets_socket_timeout(deadlines):
    waiter = Waiter(deadlines, 0.3)
    elapsed = gevent.spawn(waiter.run).get(timeout=5)
    assert 0.3 <= elapsed < 0.3 + 2 * deadlines.tick


def test_rearming_later_postpones_the_timeout(deadlines):
    waiter = Waiter(deadlines, 0.2, rearm_after=0.1, rearm_seconds=0.5)
    elapsed = gevent.spawn(waiter.run).get(timeout=5)
    assert 0.6 <= elapsed < 0.6 + 2 * deadlines.tick


def test_a_disarmed_session_is_left_alone_and_not_kept_alive(deadlines):
    class Session:
        deadline = filed_at = math.inf
        greenlet = None

    session = Session()
    deadlines.arm(session, 0.1)
    deadlines.disarm(session)
    ref = weakref.ref(session)
    del session
    gc.collect()
    assert ref() is None
    gevent.sleep(0.3)  # its bucket comes up: nothing to do, nothing raised
