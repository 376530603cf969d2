"""Active health: judging one check's answer, and the rise/fall state of a backend (pure).

Theory of operation
-------------------
A check is one TCP connect, or one HTTP request on a fresh connection (`request`), whose answer
is fed to an `HttpAnswer` piece by piece as it arrives; `feed` gives a `Verdict` as soon as one
can be given (the status line decides, unless a body substring is expected), `finish` gives
one at the end of the stream. Whatever is not a well-formed HTTP/1.x answer with an expected
status (and the expected substring in the first MAX_ANSWER bytes of its body) fails the check.

`BackendHealth` turns verdicts into a state, as HAProxy does: a backend starts up; `fall`
failed checks in a row take it down, `rise` good ones in a row bring it back. `record` returns
True when the state changed, so the caller logs and publishes once per change, never per check.

No sockets, no clock, no logging: the checker (sozu.health.checker) does the I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ANSWER = 65536  # bytes of an answer read at most; an expected body must come within them
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")
_CONTENT_LENGTH = re.compile(rb"\r?\ncontent-length:[ \t]*([0-9]{1,15})[ \t]*\r?\n", re.I)
_CHUNKED = re.compile(rb"\r?\ntransfer-encoding:[^\r\n]*chunked", re.I)
USER_AGENT = "sozu-health-check"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str | None = None  # why it failed


OK = Verdict(True)


def request(check: dict, address: str) -> bytes:
    """The request of an HTTP check of the backend at `address`: Host is the check's `host`,
    else the backend's address (what curl sends for http://IP:PORT/)."""
    host = check.get("host") or address
    return (f"{check['method']} {check['path']} HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def expected_statuses(check: dict) -> str:
    statuses = check.get("expected_statuses") or []
    return ", ".join(map(str, statuses)) if statuses else "2xx or 3xx"


class HttpAnswer:
    """The answer to one HTTP check, fed as it arrives."""

    __slots__ = ("check", "data", "status", "head_end")

    def __init__(self, check: dict):
        self.check = check
        self.data = bytearray()
        self.status: int | None = None
        self.head_end = -1

    def feed(self, piece: bytes) -> Verdict | None:
        """A verdict once one can be given, else None (more is needed)."""
        self.data += piece
        if self.status is None:
            end = self.data.find(b"\n")
            if end < 0:
                return self._too_long("status line") if len(self.data) > 1024 else None
            match = _STATUS_LINE.match(self.data, 0, end + 1)
            if match is None:
                return Verdict(False, f"not an HTTP answer: {_show(bytes(self.data[:end + 1]))}")
            self.status = int(match.group(1))
            statuses = self.check.get("expected_statuses") or []
            if not (self.status in statuses if statuses else 200 <= self.status < 400):
                return Verdict(False, f"status {self.status}, expected {expected_statuses(self.check)}")
            if self.check.get("expected_body") is None:
                return OK
        if self.head_end < 0:
            end = self.data.find(b"\r\n\r\n")
            self.head_end = end + 4 if end >= 0 else -1
            if self.head_end < 0:
                return self._too_long("header") if len(self.data) > MAX_ANSWER else None
        body = self._body(complete=False)
        if self.check["expected_body"].encode() in body:
            return OK
        if len(self.data) >= MAX_ANSWER or self._complete():
            return self._missing_body()
        return None

    def finish(self) -> Verdict:
        """The backend closed the connection (or the answer reached MAX_ANSWER)."""
        if self.status is None:
            if not self.data:
                return Verdict(False, "connection closed without an answer")
            return Verdict(False, f"not an HTTP answer: {_show(bytes(self.data[:80]))}")
        if self.head_end < 0:
            return Verdict(False, "answer cut short in its headers")
        if self.check["expected_body"].encode() in self._body(complete=True):
            return OK
        return self._missing_body()

    def _too_long(self, what: str) -> Verdict:
        return Verdict(False, f"not an HTTP answer: {what} too long")

    def _missing_body(self) -> Verdict:
        return Verdict(False, f"status {self.status} but the body lacks "
                              f"{_show(self.check['expected_body'].encode())}")

    def _complete(self) -> bool:
        length = _CONTENT_LENGTH.search(self.data, 0, self.head_end)
        return length is not None and len(self.data) - self.head_end >= int(length.group(1))

    def _body(self, complete: bool) -> bytes:
        body = bytes(self.data[self.head_end:])
        if complete and _CHUNKED.search(self.data, 0, self.head_end):
            return _dechunk(body)
        return body


def _dechunk(body: bytes) -> bytes:
    """The data of a chunked body, as far as it is well-formed."""
    out, pos = bytearray(), 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            return bytes(out)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


def _show(data: bytes) -> str:
    text = repr(data)[1:]
    return text if len(text) <= 60 else text[:57] + "..."


class BackendHealth:
    """The rise/fall state of one checked backend (see the module docstring)."""

    __slots__ = ("up", "successes", "failures", "last_error")

    def __init__(self, up: bool = True):
        self.up = up
        self.successes = 0   # good checks in a row
        self.failures = 0    # failed checks in a row
        self.last_error: str | None = None

    def record(self, verdict: Verdict, rise: int, fall: int) -> bool:
        """One check's verdict; True when the backend went up or down with it."""
        if verdict.ok:
            self.successes += 1
            self.failures = 0
            if not self.up and self.successes >= rise:
                self.up = True
                return True
            return False
        self.failures += 1
        self.successes = 0
        self.last_error = verdict.reason
        if self.up and self.failures >= fall:
            self.up = False
            return True
        return False
