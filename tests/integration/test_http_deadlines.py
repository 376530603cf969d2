"""The Deadlines greenlet: a session waiting past its deadline gets socket.timeout where it
waits; re-arming later postpones it; a finished session is not kept alive.

Each scenario runs in a child Python process: a gevent hub left in the test process (sockets it
closes later, by number) once closed a descriptor that a later test's listening socket had
reused, so that test talked to the wrong server."""
import json
import subprocess
import sys

from tests.integration.harness import ROOT

SCENARIOS = r'''
import gc, json, math, sys, time, weakref
import gevent
from gevent import socket
from sozu.http.deadlines import Deadlines

class Session:
    def __init__(self):
        self.deadline = self.filed_at = math.inf
        self.greenlet = None

def wait(deadlines, seconds, rearm_after=None, rearm_seconds=None):
    session = Session()
    session.greenlet = gevent.getcurrent()
    a, b = socket.socketpair()
    start = time.monotonic()
    try:
        deadlines.arm(session, seconds)
        if rearm_after is not None:
            gevent.sleep(rearm_after)
            deadlines.arm(session, rearm_seconds)
        a.recv(1)
        return None
    except socket.timeout:
        return time.monotonic() - start
    finally:
        a.close()
        b.close()

deadlines = Deadlines()
gevent.spawn(deadlines.run)
result = {"tick": deadlines.tick}
result["plain"] = gevent.spawn(wait, deadlines, 0.3).get(timeout=5)
result["rearmed"] = gevent.spawn(wait, deadlines, 0.2, 0.1, 0.5).get(timeout=5)
session = Session()
deadlines.arm(session, 0.1)
deadlines.disarm(session)
ref = weakref.ref(session)
del session
gc.collect()
result["collected"] = ref() is None
gevent.sleep(0.3)  # its bucket comes up: nothing to do, nothing raised

# A deadline found past, but the session moved on (a new state) before the throw: none.
def waiter(session, a):
    try:
        a.recv(1)
        return "woken"
    except socket.timeout:
        return "thrown"

a, b = socket.socketpair()
session = Session()
session.greenlet = gevent.spawn(waiter, session, a)
gevent.sleep(0)  # it waits in recv
session.deadline = time.monotonic() - 1
deadlines.check(session, time.monotonic())
session.deadline = math.inf  # what enter() does
gevent.sleep(0.05)
b.send(b"x")
result["moved_on"] = session.greenlet.get(timeout=5)
a.close()
b.close()
print(json.dumps(result))
'''


def run_scenarios() -> dict:
    out = subprocess.run([sys.executable, "-c", SCENARIOS], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_deadlines():
    result = run_scenarios()
    tick = result["tick"]
    assert 0.3 <= result["plain"] < 0.3 + 2 * tick, "a wait past its deadline gets socket.timeout"
    assert 0.6 <= result["rearmed"] < 0.6 + 2 * tick, "re-arming later postpones the timeout"
    assert result["collected"], "a finished session is not kept alive by its bucket entry"
    assert result["moved_on"] == "woken", "a deadline is never thrown into a later state's wait"
