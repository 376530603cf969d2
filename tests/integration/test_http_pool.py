"""The per-worker backend pool, without processes (its liveness check and expiry): fake
connections and a fake clock; the pool itself imports no gevent."""
import pytest

from sozu.http import backend_pool
from sozu.http.backend_pool import BackendPool


class FakeConnection:
    def __init__(self, alive: bool = True, unread: bytes = b""):
        self.alive, self.unread, self.closed, self.peeked = alive, unread, False, 0

    def settimeout(self, timeout):
        pass

    def recv(self, size, flags=0):
        self.peeked += 1
        if self.unread:
            return self.unread[:size]
        if self.alive:
            raise BlockingIOError()
        return b""

    def close(self):
        self.closed = True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(backend_pool.time, "monotonic", lambda: now[0])
    return now


def test_every_reuse_is_checked_however_young_the_connection(clock):
    pool = BackendPool()
    connection = FakeConnection()
    for peeks in (1, 2):
        pool.put("a", connection)
        assert pool.get("a") is connection and connection.peeked == peeks


def test_a_connection_with_unasked_bytes_is_dropped(clock):
    pool = BackendPool()
    poisoned = FakeConnection(unread=b"HTTP/1.1 200 OK\r\n")
    pool.put("a", poisoned)
    assert pool.get("a") is None and poisoned.closed


def test_a_connection_closed_by_the_backend_is_dropped(clock):
    pool = BackendPool()
    dead, alive = FakeConnection(alive=False), FakeConnection()
    pool.put("a", alive)
    pool.put("a", dead)  # the most recent is tried first
    assert pool.get("a") is alive
    assert dead.closed and pool.get("a") is None


def test_the_oldest_goes_when_a_backend_has_too_many(clock):
    pool = BackendPool(max_idle_per_backend=2)
    first, second, third = FakeConnection(), FakeConnection(), FakeConnection()
    for connection in (first, second, third):
        pool.put("a", connection)
    assert first.closed and len(pool) == 2


def test_idle_connections_expire_even_for_addresses_never_asked_for_again(clock):
    pool = BackendPool()
    removed = [FakeConnection() for _ in range(3)]
    for connection in removed:
        pool.put("removed:1", connection)
    clock[0] += backend_pool.IDLE_TIMEOUT - 1
    recent = FakeConnection()
    pool.put("b", recent)
    assert not any(c.closed for c in removed), "not before IDLE_TIMEOUT"
    clock[0] += backend_pool.PRUNE_EVERY
    pool.put("b", FakeConnection())
    assert all(c.closed for c in removed) and "removed:1" not in pool.idle
    assert not recent.closed and len(pool) == 2
