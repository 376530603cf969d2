"""Logging for the master and the workers.

Every line carries the process role and pid (`MASTER 1234`, `WRK-0 1240`) so an operator can tell
the processes apart in one stream. The level is a filter like `info,sozu.http=debug`: a default
level, then per-logger overrides. Access logs go to their own logger, `sozu.access`, with their own
target (or nowhere), so that turning them off costs one attribute test per request.

Handlers are opened in the master, before fork, so that a chrooted, unprivileged worker keeps
writing to a file it could no longer open.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from sozu import access_log, log_filter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

access = logging.getLogger("sozu.access")
LogFilterError = log_filter.LogFilterError


def parse_filter(spec: str) -> tuple[int, dict[str, int]]:
    """`info,sozu.http=debug` -> (INFO, {"sozu.http": DEBUG}), in sozu.log_filter's grammar."""
    default, overrides = log_filter.parse(spec)
    return LEVELS[default or log_filter.DEFAULT_LEVEL], {name: LEVELS[level] for name, level in overrides}


class _Formatter(logging.Formatter):
    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<5} {self.tag} {self.pid} "
                f"{record.name}: {record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _AccessFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z ACCESS {self.tag} {self.pid} {record.getMessage()}"


class _JsonAccessFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return access_log.json_line(f"{stamp}.{int(record.msecs):03d}Z", self.tag, self.pid, record)


def _open_target(target: str):
    if target == "stdout":
        return sys.stdout
    if target == "stderr":
        return sys.stderr
    if target.startswith("file://"):
        # Line-buffered append: lines from several processes interleave whole.
        return open(target[len("file://"):], "a", buffering=1, encoding="utf-8")
    raise LogFilterError(f"unknown log target {target!r}")


_overridden: set[str] = set()


def apply_filter(spec: str) -> None:
    """Set the levels of a filter; loggers named by a previous filter go back to the default."""
    default, overrides = parse_filter(spec)
    logging.getLogger("sozu").setLevel(default)
    for name in _overridden - set(overrides):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in overrides.items():
        logging.getLogger(name).setLevel(level)
    _overridden.clear()
    _overridden.update(overrides)


def setup(level: str, target: str = "stdout", access_target: str = "stdout", tag: str = "MASTER",
          access_format: str = "text") -> None:
    """Configure the `sozu` logger tree. SOZU_LOG overrides the configured level."""
    root = logging.getLogger("sozu")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(_open_target(target))
    handler.setFormatter(_Formatter(tag))
    root.addHandler(handler)
    root.propagate = False

    for h in list(access.handlers):
        access.removeHandler(h)
    access.propagate = False
    if access_target == "off":
        access.disabled = True
    else:
        access.disabled = False
        access_handler = access_log.NonBlockingHandler(access_target)
        json_lines = access_format == "json"
        access_handler.setFormatter(_JsonAccessFormatter(tag) if json_lines else _AccessFormatter(tag))
        access_log.configure(access_format)
        access.addHandler(access_handler)
        access.setLevel(logging.INFO)
    apply_filter(os.environ.get("SOZU_LOG") or level)


def retag(tag: str) -> None:
    """After fork: the worker's lines carry its own tag and pid."""
    for logger in (logging.getLogger("sozu"), access):
        for handler in logger.handlers:
            fmt = handler.formatter
            if isinstance(fmt, _Formatter):
                fmt.tag = tag
                fmt.pid = os.getpid()
