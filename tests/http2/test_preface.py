"""The HTTP/2 preface told apart from HTTP/1.x by a connection's first bytes (sozu.http2.preface)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sozu.http2.preface import PREFACE, is_preface


@pytest.mark.parametrize("start, verdict", [
    (PREFACE, True),
    (PREFACE + b"\x00\x00\x12\x04", True),        # the client's SETTINGS right behind it
    (b"", None),                                   # nothing yet
    (b"P", None), (b"PR", None), (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r", None),
    (b"POST / HTTP/1.1\r\n", False), (b"PUT", False), (b"PROPFIND / HTTP/1.1\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
    (b"PRI * HTTP/1.1\r\n\r\n", False),             # not the preface: HTTP/1.x's 400
    (b"pri * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
])
def test_is_preface(start, verdict):
    assert is_preface(start) is verdict


@given(st.binary(max_size=40))
def test_undecided_only_on_a_strict_prefix_and_decided_for_good(data):
    verdict = is_preface(data)
    if verdict is None:
        assert len(data) < len(PREFACE) and PREFACE.startswith(data)
    else:  # more bytes never change a verdict
        assert is_preface(data + b"x") is verdict
