"""Access logs: one line per HTTP request or TCP connection, as text or as one JSON object per
line, written so that the log target can never stop the traffic.

The text line is what it always was. A JSON line holds the same fields, plus the request id
(the Sozu-Id the client and the backend saw) and three times in milliseconds from the start of
the request: `connect_ms` (a backend connection was ready), `first_byte_ms` (the backend's
answer head arrived) and `total_ms` (the answer was sent); a time that never came is null.

`NonBlockingHandler` writes each line with one os.write on a descriptor of its own, opened
non-blocking (a pipe or a terminal gets a fresh open file description through /proc/self/fd,
so the flag does not touch the process's stdout). A line that cannot be written at once (a
pipe nobody reads, a closed pipe, a full disk) is dropped and counted, and the first failure
of a series is reported once on the main log: a worker never waits for its access log.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys

logger = logging.getLogger("sozu.access")
FORMATS = ("text", "json")
_json = False  # the format of this process's access lines (configure)

HTTP_TEXT = "%s %s %s %d %s %s %s in=%d out=%d %.1fms%s"
TCP_TEXT = "%s %s %s tcp %s in=%d out=%d %.1fms"


def configure(access_format: str) -> None:
    global _json
    _json = access_format == "json"


def _ms(since: float, at: float) -> float | None:
    return round((at - since) * 1000, 3) if at else None


def http(client_ip: str, exchange, request_id: bytes) -> None:
    """One finished HTTP exchange (sozu.http.session.Exchange)."""
    total = exchange.duration_ms()
    method, path = exchange.method.decode("latin-1"), exchange.path.decode("latin-1")
    if _json:
        fields = {"type": "http", "client": client_ip, "application": exchange.app_id,
                  "backend": exchange.backend, "status": exchange.status, "method": method,
                  "host": exchange.host, "path": path, "bytes_in": exchange.bytes_in,
                  "bytes_out": exchange.bytes_out,
                  "request_id": None if request_id == b"-" else request_id.decode("latin-1"),
                  "connect_ms": _ms(exchange.start, exchange.connected),
                  "first_byte_ms": _ms(exchange.start, exchange.first_byte),
                  "total_ms": round(total, 3)}
        if exchange.rewritten:
            fields["rewritten"] = exchange.rewritten
        logger.info("", extra={"access": fields})
        return
    logger.info(HTTP_TEXT, client_ip, exchange.app_id, exchange.backend, exchange.status, method,
                exchange.host, path, exchange.bytes_in, exchange.bytes_out, total,
                f" rewritten={exchange.rewritten}" if exchange.rewritten else "")


def tcp(client_ip: str, app_id, backend, reason: str, bytes_in: int, bytes_out: int,
        total_ms: float, connect_ms: float | None) -> None:
    if _json:
        logger.info("", extra={"access": {
            "type": "tcp", "client": client_ip, "application": app_id, "backend": backend,
            "end": reason, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "connect_ms": None if connect_ms is None else round(connect_ms, 3),
            "total_ms": round(total_ms, 3)}})
        return
    logger.info(TCP_TEXT, client_ip, app_id, backend, reason, bytes_in, bytes_out, total_ms)


def json_line(stamp: str, tag: str, pid: int, record: logging.LogRecord) -> str:
    fields = getattr(record, "access", None)
    if fields is None:  # a plain message on the access logger
        fields = {"message": record.getMessage()}
    return json.dumps({"time": stamp, "process": tag, "pid": pid, **fields},
                      ensure_ascii=False, separators=(",", ":"), default=str)


class NonBlockingHandler(logging.Handler):
    """Lines out without ever waiting (see the module docstring)."""

    def __init__(self, target: str):
        super().__init__()
        self.fd = _open_non_blocking(target)
        self.dropped = 0
        self.failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # the log handler's edge: a record that cannot be formatted is no crash
            self.handleError(record)
            return
        try:
            written = os.write(self.fd, data)
            if written < len(data):  # a pipe with less room than the line: the rest, once
                os.write(self.fd, data[written:])
        except OSError as error:
            self.dropped += 1
            if not self.failing:
                self.failing = True
                logging.getLogger("sozu.logs").warning(
                    "access log: cannot write (%s); dropping lines until it works",
                    errno.errorcode.get(error.errno, error))
            return
        if self.failing:
            self.failing = False
            logging.getLogger("sozu.logs").info("access log: writing again, %d lines dropped",
                                                self.dropped)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass  # already closed
        super().close()


def _open_non_blocking(target: str) -> int:
    if target.startswith("file://"):
        return os.open(target[len("file://"):], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                       | os.O_CLOEXEC, 0o644)
    stream = sys.stdout if target == "stdout" else sys.stderr
    stream.flush()
    fd = stream.fileno()
    try:  # a description of our own: O_NONBLOCK here leaves the process's stdout as it is
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return os.dup(fd)
