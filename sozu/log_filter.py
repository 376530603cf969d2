"""The one grammar of log filters, for log_level, SOZU_LOG and the LOGGING order (pure).

    FILTER  = ELEMENT ("," ELEMENT)*
    ELEMENT = LEVEL | LOGGER "=" LEVEL        (blanks around each part are ignored)
    LOGGER  = dotted Python identifiers, '-' allowed: sozu.http, sozu.access
    LEVEL   = trace | debug | info | warn | warning | error | critical | off  (any case)

At most one default LEVEL and each LOGGER once; an empty element (`info,`) is refused, so a
typo is an error rather than a filter that silently means less than it says. Without a default,
the default is info.
"""
from __future__ import annotations

import re

LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical", "off")
DEFAULT_LEVEL = "info"
_LOGGER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*")


class LogFilterError(ValueError):
    pass


def parse(text: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """`info,sozu.http=DEBUG` -> ("info", (("sozu.http", "debug"),)); LogFilterError says why."""
    default, overrides = None, {}
    for part in text.split(","):
        name, sep, level = (p.strip() for p in part.rpartition("="))
        if level.lower() not in LEVELS:
            raise LogFilterError(f"unknown log level {level!r}" if level else "empty filter element")
        if not sep:
            if default is not None:
                raise LogFilterError("two default levels")
            default = level.lower()
        elif not _LOGGER.fullmatch(name):
            raise LogFilterError(f"bad logger name {name!r}")
        elif name in overrides:
            raise LogFilterError(f"logger {name} named twice")
        else:
            overrides[name] = level.lower()
    return default, tuple(overrides.items())
