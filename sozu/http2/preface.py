"""The HTTP/2 connection preface, told apart from an HTTP/1.x request (pure; docs/http2.md).

A plain HTTP listener with `h2c_prior_knowledge` serves HTTP/2 to a client that opens with the
preface (RFC 9113 §3.3, §3.4: "prior knowledge") and HTTP/1.x to any other. `PRI` is a method
reserved for the preface (RFC 9113 §11.6), so the first byte that differs from it makes a
connection HTTP/1.x, and only a strict prefix of it ("P", "PR": still maybe POST, PROPFIND)
needs more bytes to tell.
"""
from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_preface(start: bytes) -> bool | None:
    """The first bytes of a connection: True, they are the HTTP/2 preface; False, HTTP/1.x;
    None, too few to tell (a strict prefix of the preface, or nothing)."""
    seen = start[:len(PREFACE)]
    if seen != PREFACE[:len(seen)]:
        return False
    return True if len(seen) == len(PREFACE) else None
