"""Judging health check answers, and the rise/fall state (pure)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sozu.health.verdict import BackendHealth, HttpAnswer, Verdict, request
from sozu.messages import health_check

CHECK = health_check({"path": "/health", "host": "example.com"})
BODY_CHECK = health_check({"expected_body": "ready", "expected_statuses": [200]})


def judge(check, *pieces: bytes, eof: bool = True) -> Verdict | None:
    answer = HttpAnswer(check)
    for piece in pieces:
        verdict = answer.feed(piece)
        if verdict is not None:
            return verdict
    return answer.finish() if eof else None


def test_the_request():
    assert request(CHECK, "127.0.0.1:80") == (
        b"GET /health HTTP/1.1\r\nHost: example.com\r\nUser-Agent: sozu-health-check\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n")
    assert b"Host: 127.0.0.1:80\r\n" in request(health_check({}), "127.0.0.1:80")


@pytest.mark.parametrize("pieces,ok,reason", [
    ([b"HTTP/1.1 200 OK\r\n"], True, None),
    ([b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n"], True, None),
    ([b"HTT", b"P/1.1 204 No Content\r\n"], True, None),
    ([b"HTTP/1.1 500 Oops\r\n\r\n"], False, "status 500, expected 2xx or 3xx"),
    ([b"HTTP/1.1 404\r\n"], False, "status 404, expected 2xx or 3xx"),
    ([b"SSH-2.0-OpenSSH_9.2\r\n"], False, "not an HTTP answer: 'SSH-2.0-OpenSSH_9.2\\r\\n'"),
    ([b"\x00\xff garbage"], False, "not an HTTP answer: '\\x00\\xff garbage'"),
    ([], False, "connection closed without an answer"),
    ([b"x" * 2000], False, "not an HTTP answer: status line too long"),
])
def test_status_line_decides(pieces, ok, reason):
    assert judge(CHECK, *pieces) == Verdict(ok, reason)


def test_expected_statuses():
    check = health_check({"expected_statuses": [503]})
    assert judge(check, b"HTTP/1.1 503 Busy\r\n").ok
    assert judge(check, b"HTTP/1.1 200 OK\r\n") == Verdict(False, "status 200, expected 503")


def test_expected_body():
    assert judge(BODY_CHECK, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"ready", eof=False).ok
    assert judge(BODY_CHECK, b"HTTP/1.1 200 OK\r\n\r\nnot yet") == Verdict(
        False, "status 200 but the body lacks 'ready'")
    # Content-Length reached: no need to wait for the close.
    assert judge(BODY_CHECK, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbusy", eof=False) == Verdict(
        False, "status 200 but the body lacks 'ready'")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n2\r\ndy\r\n0\r\n\r\n"
    assert judge(BODY_CHECK, chunked).ok
    assert judge(BODY_CHECK, b"HTTP/1.1 200 OK\r\nX: y") == Verdict(False, "answer cut short in its headers")
    assert judge(BODY_CHECK, b"HTTP/1.1 500 E\r\n\r\nready").reason == "status 500, expected 200"


@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_give_a_verdict(data, size):
    answer = HttpAnswer(BODY_CHECK)
    verdict = None
    for start in range(0, len(data), size):
        verdict = answer.feed(data[start:start + size])
        if verdict is not None:
            break
    verdict = verdict or answer.finish()
    if verdict.ok:
        assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
        assert b"ready" in data


def test_rise_and_fall():
    health = BackendHealth()
    bad, good = Verdict(False, "refused"), Verdict(True)
    assert [health.record(bad, rise=2, fall=3) for _ in range(3)] == [False, False, True]
    assert not health.up and health.last_error == "refused"
    assert health.record(bad, 2, 3) is False  # down stays down: one change, one report
    assert [health.record(good, 2, 3), health.record(bad, 2, 3)] == [False, False]  # not in a row
    assert [health.record(good, 2, 3), health.record(good, 2, 3)] == [False, True]
    assert health.up and health.record(good, 2, 3) is False
