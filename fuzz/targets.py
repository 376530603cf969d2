"""Fuzz targets: each feeds arbitrary bytes to one parser of the proxy, which may only answer or
raise its own error (ProtocolError, ProxyProtocolError, ConfigError, MessageError). Any other
exception propagates, and is a crash: the input is kept (fuzz/run.py) and becomes a corpus case
(fuzz/corpus/<target>/) once fixed, replayed by tests/test_fuzz_corpus.py.

Each target also checks what its parser promises about lengths: a head or header never uses
more bytes than it was given, a chunked framer never claims more than it was fed."""
from __future__ import annotations

from sozu import config as config_module
from sozu import proxy_protocol as pp
from sozu.http import parser
from sozu.messages import Decoder, MessageError, Request

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS")


def http_request(data: bytes) -> None:
    """A request head, then its chunked body behind it when it announces one."""
    try:
        result = parser.parse_request_head(data)
        if result is None:
            return
        head, used = result
        assert 0 < used <= len(data), (used, len(data))
        if head.chunked:
            _frame(parser.ChunkedFramer(), data[used:], len(data))
    except parser.ProtocolError:
        return


def http_response(data: bytes) -> None:
    """A backend's response head; the first byte picks the request method it answers."""
    if not data:
        return
    method, buf = METHODS[data[0] % len(METHODS)], data[1:]
    try:
        result = parser.parse_response_head(buf, method)
    except parser.ProtocolError:
        return
    if result is not None:
        assert 0 < result[1] <= len(buf), (result[1], len(buf))


def chunked(data: bytes) -> None:
    """A chunked body, fed in pieces whose size the first byte picks (lines split anywhere)."""
    if not data:
        return
    step = data[0] + 1
    try:
        _frame(parser.ChunkedFramer(), data[1:], step)
    except parser.ProtocolError:
        return


def _frame(framer: "parser.ChunkedFramer", body: bytes, step: int) -> None:
    for start in range(0, len(body), step):
        piece = body[start:start + step]
        used = framer.feed(piece)
        assert 0 <= used <= len(piece), (used, len(piece))
        if framer.done:
            return
        assert used == len(piece), "an unfinished body must take every byte"


def proxy_protocol(data: bytes) -> None:
    """A PROXY header, read as a listener does: bytes_wanted() first, then parse()."""
    try:
        wanted = pp.bytes_wanted(data)
        result = pp.parse(data)
    except pp.ProxyProtocolError:
        return
    assert wanted is None or wanted >= 0, wanted
    assert (wanted == 0) == (result is not None), (wanted, result)  # 0: complete
    if result is not None:
        assert 0 < result[1] <= len(data), (result[1], len(data))


def config(data: bytes) -> None:
    """The TOML configuration loader, through the first orders it produces (sozu config check)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # config.load refuses non-UTF-8 before parsing
    try:
        config_module.parse(text, "/nonexistent/fuzz/sozu.toml").to_orders()
    except (config_module.ConfigError, MessageError):
        return


def command(data: bytes) -> None:
    """The command socket's decoder: NUL-framed JSON, then each frame checked as a request."""
    decoder = Decoder(max_size=4096)
    half = len(data) // 2
    for piece in (data[:half], data[half:]):
        try:
            messages = decoder.feed(piece)
        except MessageError:  # FrameTooLarge: the connection is closed
            return
        for message in messages:
            if isinstance(message, MessageError):
                continue
            try:
                Request.from_json(message)
            except MessageError:
                continue


TARGETS = {f.__name__: f for f in (http_request, http_response, chunked, proxy_protocol, config, command)}
