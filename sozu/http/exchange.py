"""One request of an HTTP session: what is recorded of it, and the ways it can end early.

The exceptions are raised where a session finds out and caught at the connection's edge
(sozu.http.session.serve), except StaleConnection and BackendStoppedReading, which the session
recovers from where they happen.
"""
from __future__ import annotations

import time


class Answer(Exception):
    """End this session with an answer of this status (if no response byte was sent yet)."""

    def __init__(self, status: int, detail: str = "", body: bytes | None = None):
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class ClientGone(Exception):
    """The client closed or reset the connection: nobody to answer."""


class Aborted(Exception):
    """The backend failed after the response head was forwarded: the connection can only end."""


class StaleConnection(Exception):
    """A backend connection closed before any byte of the response."""


class BackendStoppedReading(Exception):
    """Sending the request body failed: the backend may have answered early (413, 401)."""


class Exchange:
    """What the access log and metrics say about one request."""

    __slots__ = ("start", "method", "host", "path", "status", "backend", "bytes_in", "bytes_out", "app_id",
                 "rewritten", "connected", "first_byte")

    def __init__(self, method=b"-", host="-", path=b"-"):
        self.start = time.monotonic()
        self.method, self.host, self.path = method, host, path
        self.status = 0
        self.backend = "-"
        self.bytes_in = self.bytes_out = 0
        self.app_id = "-"
        self.rewritten = None  # host and path sent to the backend, when a front rewrote them
        self.connected = 0.0   # when the backend connection was ready (monotonic), if ever
        self.first_byte = 0.0  # when the backend's answer head was read, if ever

    def duration_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000
