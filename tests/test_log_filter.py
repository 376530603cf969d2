"""sozu.log_filter: the one grammar of log filters (log_level, SOZU_LOG, the LOGGING order)."""
from __future__ import annotations

import logging

import pytest

from sozu import log_filter, logs
from sozu.log_filter import LogFilterError
from sozu.messages import MessageError, Order


def test_parse():
    assert log_filter.parse("info,sozu.http=DEBUG") == ("info", (("sozu.http", "debug"),))
    assert log_filter.parse("sozu=off") == (None, (("sozu", "off"),))
    assert log_filter.parse(" error , sozu.http = debug ") == ("error", (("sozu.http", "debug"),))


@pytest.mark.parametrize("text, why", [
    ("", "empty filter element"),
    ("info,", "empty filter element"),
    (",info", "empty filter element"),
    ("verbose", "unknown log level 'verbose'"),
    ("sozu.http=loud", "unknown log level 'loud'"),
    ("info,debug", "two default levels"),
    ("sozu http=debug", "bad logger name 'sozu http'"),
    ("=debug", "bad logger name ''"),
    ("sozu..http=debug", "bad logger name"),
    ("info,a=debug,a=info", "logger a named twice"),
    ("info;sozu=debug", "bad logger name 'info;sozu'"),
])
def test_refused_by_the_grammar_the_order_and_the_logs(text, why):
    with pytest.raises(LogFilterError, match=why):
        log_filter.parse(text)
    with pytest.raises(LogFilterError, match=why):
        logs.parse_filter(text)
    if text:  # an empty LOGGING order is refused as an empty string first
        with pytest.raises(MessageError, match=f"LOGGING: data: {why}"):
            Order.from_json({"type": "LOGGING", "data": text})


def test_logs_levels_are_the_grammars():
    assert set(logs.LEVELS) == set(log_filter.LEVELS)
    assert logs.parse_filter("sozu.http=trace") == (logging.INFO, {"sozu.http": logs.TRACE})
