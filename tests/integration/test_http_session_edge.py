"""The connection edge, in process: a bug anywhere in one connection's handling (here, a worker
context that raises) ends that connection with a 500 if nothing was sent yet, is logged once
with its traceback, and never escapes serve(). No real worker can be made to fail on purpose,
so these tests drive serve() over a gevent socketpair with a session context of fakes."""
import logging

import pytest

gevent = pytest.importorskip("gevent")
from gevent import socket as gsocket  # noqa: E402

from sozu.http import edge  # noqa: E402
from sozu.http.context import SessionContext  # noqa: E402
from sozu.http.deadlines import Deadlines  # noqa: E402


class Listener:
    address, https, scheme, port, by = "127.0.0.1:1", False, b"http", b"1", b"127.0.0.1:1"
    request_timeout = front_timeout = back_timeout = connect_timeout = 2
    answers = {}
    sticky_name = b"SOZUBALANCEID"


class Metrics:
    def __init__(self, fail=False):
        self.fail, self.recorded = fail, 0

    def record(self, exchange):
        if self.fail:
            raise RuntimeError("metrics bug")
        self.recorded += 1

    def incr(self, name, value=1):
        pass


class Router:
    def route_http(self, *args):
        raise ZeroDivisionError("router bug")


def Ctx(metrics=None, router=None):
    return SessionContext(router=router or Router(), applications={}, backends=None,
                          backend_pool=None, body_buffers=None, deadlines=Deadlines(),
                          metrics=metrics or Metrics(), buffer_size=16384)


def tcp_pair():
    with gsocket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        client = gsocket.create_connection(listening.getsockname())
        server, _ = listening.accept()
    return client, server


def exchange(ctx, data: bytes) -> bytes:
    client, server = tcp_pair()
    greenlet = gevent.spawn(edge.serve, ctx, Listener(), server, ("127.0.0.1", 1234))
    client.sendall(data)
    client.settimeout(5)
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    client.close()
    greenlet.join(5)
    assert greenlet.dead and greenlet.exception is None, "nothing escapes serve()"
    return answer


@pytest.fixture
def records(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="sozu.http")
    monkeypatch.setattr(logging.getLogger("sozu"), "propagate", True)  # as sozu's setup may not be
    return caplog


def test_a_bug_is_answered_500_and_logged_once_with_its_traceback(records):
    answer = exchange(Ctx(), b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ") and b"\r\nConnection: close\r\n" in answer
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "router bug" in records.text
    assert "GET a.test/x" in errors[0].getMessage(), "the log line names the request"


def test_a_bug_while_closing_is_logged_and_the_socket_closed(records):
    metrics = Metrics(fail=True)
    answer = exchange(Ctx(metrics=metrics), b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert "metrics bug" in records.text
