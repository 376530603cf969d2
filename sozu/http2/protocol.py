"""HTTP/2 toward clients, without I/O: the `h2` state machine with sozu's settings and limits,
and the translation between a stream and the HTTP/1.1 exchange the proxy forwards (pure).

Theory of operation
-------------------
Every request reaches its backend, an HTTP/1.1 server, through one code path: the HTTP/1.1
session (sozu.http.session), which routes, balances, uses the backend pool, retries, marks
backends down, applies the header rules and writes the access log and the metrics. An HTTP/2
stream is handed to that same session as a client connection carrying one request:

  - `request_head()` turns a stream's header block into the HTTP/1.1 request head it means
    (`:method :path HTTP/1.1`, `host: :authority`, the fields), after the checks that make a
    request malformed (RFC 9113 §8.1.1, §8.2, §8.3). A malformed request is a stream error
    (RST_STREAM PROTOCOL_ERROR) and reaches no backend. A body without Content-Length is framed
    chunked toward the session: a DATA frame is a chunk, trailers are the last chunk's trailer
    section; a Content-Length body is passed as it is, and DATA that disagrees with it (more
    than it says, or END_STREAM before all of it) resets the stream.
  - `ResponseTranslator` reads what the session writes back (HTTP/1.1 heads and bodies, parsed
    by sozu.http.parser) and turns it into HEADERS, DATA and trailers: the connection-specific
    fields go, names are lower-cased, a chunked body is unframed.

`Http2Protocol` drives h2's H2Connection (sans-IO: bytes in, events and bytes out) and turns its
events into the four the connection glue acts on: `Request`, `Body`, `Reset`, `WindowOpened`.
The framing, HPACK, stream states and flow-control arithmetic are h2's; sozu adds:

  - settings: SETTINGS_MAX_CONCURRENT_STREAMS (the listener's, 100 by default; a client that
    opens more gets GOAWAY), SETTINGS_MAX_HEADER_LIST_SIZE (the HTTP/1.1 parser's head limit),
    SETTINGS_HEADER_TABLE_SIZE (the HPACK table, 4 KiB: a larger table size update is a
    COMPRESSION_ERROR); h2 bounds a header block to 64 CONTINUATION frames (CVE-2024-27316);
  - flow control tied to the backend's pace: received DATA is acknowledged (WINDOW_UPDATE) only
    when the session has read it, so a client can send at most one window ahead of the backend;
  - floods, each ending the connection with GOAWAY ENHANCE_YOUR_CALM once a client goes past
    FLOOD_LIMIT within FLOOD_WINDOW: streams it resets while they are open and malformed
    requests (rapid reset, CVE-2023-44487), PINGs, SETTINGS;
  - a graceful GOAWAY for draining (RFC 9113 §6.8): first one naming the highest stream id
    possible, with a PING; once the PING comes back (or on `finish_goaway()`), a second one
    naming the last stream taken. Streams opened after it are refused (REFUSED_STREAM) and the
    client retries them on a new connection. These GOAWAY frames are written beside h2, whose
    state machine would refuse to send anything after a GOAWAY of its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame

from sozu.http.parser import DEFAULT_LIMITS, ProtocolError, parse_response_head
from sozu.vocabulary import DEFAULT_MAX_CONCURRENT_STREAMS

HEADER_TABLE_SIZE = 4096
MAX_HEADER_LIST_SIZE = DEFAULT_LIMITS.max_head_size
STREAM_WINDOW = 65535            # per stream: what a client may send ahead of the backend
CONNECTION_WINDOW = 1 << 20      # per connection: 16 streams' windows before one waits for another
FLOOD_LIMIT = 100                # resets, malformed requests, PINGs or SETTINGS per window
FLOOD_WINDOW = 10.0              # s
MAX_STREAM_ID = 2**31 - 1
_DRAIN_PING = b"sozu-bye"

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
# RFC 9113 §8.2.2: fields that make a request malformed (TE is allowed with "trailers" only).
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"))
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")  # a token, lower case only (§8.2.1)
# A value must not hold NUL, CR or LF, nor start or end with whitespace (§8.2.1); the rest of
# the grammar is the HTTP/1.1 parser's, which reads the head request_head() writes.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


class StreamError(Exception):
    """A malformed request or trailer section: the stream is reset, the connection goes on."""


class ConnectionAbort(Exception):
    """The connection must end: a GOAWAY saying why is queued in data_to_send()."""


# --- requests ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestStart:
    head: bytes           # the HTTP/1.1 request head, CRLF CRLF included
    method: bytes
    body: str             # "none" | "length" | "chunked"
    content_length: int | None


def request_head(fields, end_stream: bool) -> RequestStart:
    """The HTTP/1.1 head of a request whose HTTP/2 header block is fields [(name, value)];
    StreamError when the request is malformed."""
    pseudo: dict[bytes, bytes] = {}
    regular = []
    hosts = []
    lengths = set()
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                raise StreamError("a pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO or name in pseudo:
                raise StreamError(f"pseudo-header {_show(name)} unknown or repeated")
            if not value or _BAD_VALUE.search(value):
                raise StreamError(f"bad value for {_show(name)}")
            pseudo[name] = value
            continue
        _check_field(name, value)
        if name == b"host":
            hosts.append(value)
            continue
        if name == b"content-length":
            lengths.add(value)
        regular.append((name, value))
    method = pseudo.get(b":method")
    authority = pseudo.get(b":authority")
    if method is None:
        raise StreamError("no :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or authority is None:
            raise StreamError("CONNECT takes :authority only")
        target = authority
    else:
        target = pseudo.get(b":path")
        if b":scheme" not in pseudo or target is None:
            raise StreamError("no :scheme or no :path")
        if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
            raise StreamError(":path is neither absolute nor * for OPTIONS")
    if authority is not None:
        # §8.3.1: a Host that names another authority than :authority makes the request malformed.
        if any(host.lower() != authority.lower() for host in hosts):
            raise StreamError(":authority and Host disagree")
        host = authority
    else:
        if len(hosts) > 1:
            raise StreamError("several Host fields")
        host = hosts[0] if hosts else None
    content_length = None
    if lengths:
        if len(lengths) > 1 or not all(value.isdigit() and len(value) <= 18 for value in lengths):
            raise StreamError("bad or disagreeing Content-Length")
        content_length = int(next(iter(lengths)))
    if end_stream:
        if content_length:  # a body announced, none sent (HEAD announces none)
            raise StreamError("Content-Length disagrees with the DATA sent")
        body = "none"
    else:
        body = "length" if content_length is not None else "chunked"
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    if host is not None:
        lines += (b"host: ", host, b"\r\n")
    for name, value in regular:
        lines += (name, b": ", value, b"\r\n")
    if body == "chunked":
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"\r\n")
    return RequestStart(b"".join(lines), method, body, content_length)


def trailer_section(fields) -> bytes:
    """The field lines of a request's trailers, each ending in CRLF; StreamError if malformed."""
    lines = []
    for name, value in fields:
        if name[:1] == b":":
            raise StreamError("a pseudo-header in trailers")
        _check_field(name, value)
        lines += (name, b": ", value, b"\r\n")
    return b"".join(lines)


def _check_field(name: bytes, value: bytes) -> None:
    if not _NAME.match(name):
        raise StreamError(f"field name {_show(name)} is not a lower-case token")
    if name in CONNECTION_SPECIFIC:
        raise StreamError(f"connection-specific field {_show(name)}")
    if name == b"te" and value.lower() != b"trailers":
        raise StreamError("TE other than trailers")
    if _BAD_VALUE.search(value):
        raise StreamError(f"bad value for {_show(name)}")


def _show(name: bytes) -> str:
    return repr(name[:40].decode("latin-1"))


# --- responses --------------------------------------------------------------------------------

class Truncated(Exception):
    """The session ended the stream before the response it was writing was complete."""


class ResponseTranslator:
    """What the HTTP/1.1 session writes for one request, as the parts of an HTTP/2 response.

    feed(data) returns a list of parts, in order:
      ("headers", fields, end_stream)   a 1xx head (end_stream False), or the final head
      ("data", bytes, end_stream)
      ("trailers", fields)              ends the stream
    `done` is True once the response is complete; bytes after it are an error."""

    def __init__(self, method: bytes):
        self.method = method
        self.buf = bytearray()
        self.kind = None  # the final response's body: None until its head, then parser's kinds
        self.remaining = 0
        self.chunks: ChunkedDecoder | None = None
        self.done = False

    def feed(self, data) -> list:
        parts = []
        if self.done:
            if data:
                raise ProtocolError("bytes after the end of the response", 502)
            return parts
        if self.kind is None:
            self.buf += data
            while self.kind is None:
                parsed = parse_response_head(self.buf, self.method, DEFAULT_LIMITS)
                if parsed is None:
                    return parts
                head, used = parsed
                del self.buf[:used]
                if head.status < 200:
                    parts.append(("headers", response_fields(head), False))
                    continue
                self.kind = head.body
                self.remaining = head.content_length or 0
                if self.kind == "none" or (self.kind == "length" and not self.remaining):
                    self.done = True
                    parts.append(("headers", response_fields(head), True))
                    if self.buf:
                        raise ProtocolError("bytes after a response without a body", 502)
                    return parts
                parts.append(("headers", response_fields(head), False))
                if self.kind == "chunked":
                    self.chunks = ChunkedDecoder()
            data, self.buf = bytes(self.buf), bytearray()
            if not data:
                return parts
        if self.kind == "length":
            if len(data) > self.remaining:
                raise ProtocolError("more body than Content-Length", 502)
            self.remaining -= len(data)
            self.done = not self.remaining
            parts.append(("data", bytes(data), self.done))
        elif self.kind == "chunked":
            pieces, trailers = self.chunks.feed(data)
            parts += (("data", piece, False) for piece in pieces)
            if trailers is not None:
                self.done = True
                parts.append(("trailers", trailers) if trailers else ("data", b"", True))
        else:  # "close": the body ends with the session's close()
            parts.append(("data", bytes(data), False))
        return parts

    def close(self) -> list:
        """The session is done writing: the parts that end the stream, or Truncated."""
        if self.done:
            return []
        if self.kind == "close":
            self.done = True
            return [("data", b"", True)]
        raise Truncated("the response ended before its end")


def response_fields(head) -> list[tuple[bytes, bytes]]:
    fields = [(b":status", b"%d" % head.status)]
    for name, value in head.headers:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC and name != b"te":
            fields.append((name, value))
    return fields


_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ChunkedDecoder:
    """The data of a chunked body (RFC 9112 §7.1) and its trailer fields. The body was checked
    as it arrived from the backend (sozu.http.parser.ChunkedFramer); lines are still bounded."""

    def __init__(self):
        self.state = _SIZE
        self.remaining = 0
        self.line = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []

    def feed(self, data) -> tuple[list[bytes], list | None]:
        """(data pieces, trailer fields once the body is complete, else None)."""
        pieces = []
        if type(data) is memoryview:
            data = bytes(data)
        view = memoryview(data)
        pos, size = 0, len(view)
        while pos < size:
            if self.state == _DATA:
                take = min(self.remaining, size - pos)
                pieces.append(bytes(view[pos:pos + take]))
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _DATA_END
                continue
            if self.state == _DONE:
                raise ProtocolError("bytes after the end of a chunked body", 502)
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += view[pos:]
                if len(self.line) > DEFAULT_LIMITS.max_head_size:
                    raise ProtocolError("chunked body line too long", 502)
                break
            line = bytes(self.line + view[pos:end]).rstrip(b"\r")
            self.line.clear()
            pos = end + 1
            if self.state == _DATA_END:
                if line:
                    raise ProtocolError("no CRLF after chunk data", 502)
                self.state = _SIZE
            elif self.state == _SIZE:
                match = _CHUNK_SIZE.match(line)
                if match is None:
                    raise ProtocolError("bad chunk size", 502)
                self.remaining = int(match.group(), 16)
                self.state = _DATA if self.remaining else _TRAILERS
            elif line:  # a trailer field
                name, colon, value = line.partition(b":")
                if not colon:
                    raise ProtocolError("bad trailer field", 502)
                name = name.lower()
                if name not in CONNECTION_SPECIFIC:
                    self.trailers.append((name, value.strip(b" \t")))
            else:
                self.state = _DONE
                if pos < size:
                    raise ProtocolError("bytes after the end of a chunked body", 502)
                return pieces, self.trailers
        return pieces, None


# --- the connection ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    stream_id: int
    start: RequestStart
    ended: bool          # no body follows


@dataclass(frozen=True, slots=True)
class Body:
    stream_id: int
    data: bytes          # what the session reads: DATA as it came, or framed as chunks
    flow: int            # flow-controlled bytes to acknowledge once the session read it
    ended: bool


@dataclass(frozen=True, slots=True)
class Reset:
    stream_id: int
    reason: str


class WindowOpened:
    """Some send window grew: streams waiting for one may go on."""


WINDOW_OPENED = WindowOpened()


class RateLimit:
    """At most `limit` hits in any fixed window of `window` seconds (now: any clock)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.start, self.count = -window, 0

    def hit(self, now: float) -> bool:
        """Count one; False once past the limit."""
        if now - self.start >= self.window:
            self.start, self.count = now, 0
        self.count += 1
        return self.count <= self.limit


class _LengthCheckedBySozu(h2.stream.H2Stream):
    """h2 makes a Content-Length that disagrees with the DATA a connection error; RFC 9113
    §8.1.1 makes it a stream error, and Http2Protocol checks it so."""

    def _initialize_content_length(self, headers) -> None:
        self._expected_content_length = None

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        self._actual_content_length += length


class _ServerConnection(h2.connection.H2Connection):
    def _begin_new_stream(self, stream_id, allowed_ids):
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _LengthCheckedBySozu  # same layout, two methods replaced
        return stream


class _Inbound:
    """What the protocol knows of a request body still arriving."""

    __slots__ = ("body", "length", "received")

    def __init__(self, body: str, length: int | None):
        self.body, self.length, self.received = body, length, 0


class Http2Protocol:
    def __init__(self, max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS):
        # Inbound fields are checked here (request_head), outbound ones were by the HTTP/1.1
        # parser that read them from the backend: tokens, values without NUL, CR or LF and
        # stripped; response_fields and ChunkedDecoder lower-case the names and drop the
        # connection-specific ones. h2's own pass over every outbound field would only repeat
        # that: it cost about 10 us of CPU per small request, of 115-150 (bench/h2bench.py,
        # protocol_cost, with and without).
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=False,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = connection = _ServerConnection(config)
        connection.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: HEADER_TABLE_SIZE,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        # In force from the first byte, not only once the client acknowledges the settings.
        connection.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        connection.decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        connection.initiate_connection()
        connection.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.inbound: dict[int, _Inbound] = {}
        self.glitches = RateLimit(FLOOD_LIMIT, FLOOD_WINDOW)  # resets and malformed requests
        self.pings = RateLimit(FLOOD_LIMIT, FLOOD_WINDOW)
        self.settings = RateLimit(FLOOD_LIMIT, FLOOD_WINDOW)
        self.extra = []  # frames written beside h2 (the drain's GOAWAY and PING)
        self.last_stream_id: int | None = None  # once the final GOAWAY is sent: streams above are refused
        self.draining = False

    # -- input -----------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:  # GOAWAY queued by h2
            raise ConnectionAbort(f"{type(error).__name__}: {error}") from None
        out = []
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._request(event, out, now)
            elif kind is h2.events.DataReceived:
                self._data(event, out)
            elif kind is h2.events.TrailersReceived:
                self._trailers(event, out)
            elif kind is h2.events.StreamReset:
                self.inbound.pop(event.stream_id, None)
                self._glitch(now)
                out.append(Reset(event.stream_id, f"reset by the client ({event.error_code!r})"))
            elif kind is h2.events.WindowUpdated:
                out.append(WINDOW_OPENED)
            elif kind is h2.events.RemoteSettingsChanged:
                if not self.settings.hit(now):
                    self._calm("SETTINGS flood")
                out.append(WINDOW_OPENED)
            elif kind is h2.events.PingReceived:
                if not self.pings.hit(now):
                    self._calm("PING flood")
            elif kind is h2.events.PingAckReceived:
                if event.ping_data == _DRAIN_PING:
                    self.finish_goaway()
            elif kind is h2.events.ConnectionTerminated:
                raise ConnectionAbort(f"the client sent GOAWAY ({event.error_code!r})")
        return out

    def _request(self, event, out: list, now: float) -> None:
        stream_id = event.stream_id
        ended = event.stream_ended is not None
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            start = request_head(event.headers, ended)
        except StreamError as error:
            self._stream_error(stream_id, str(error), out, now)
            return
        if not ended:
            self.inbound[stream_id] = _Inbound(start.body, start.content_length)
        out.append(Request(stream_id, start, ended))

    def _data(self, event, out: list) -> None:
        stream_id, data = event.stream_id, event.data
        ended = event.stream_ended is not None
        inbound = self.inbound.get(stream_id)
        if inbound is None:  # a stream already reset: give the connection window back now
            self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return
        inbound.received += len(data)
        if inbound.body == "length":
            if inbound.received > inbound.length or (ended and inbound.received != inbound.length):
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                self._stream_error(stream_id, "Content-Length disagrees with the DATA sent", out, None)
                return
        elif data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if ended:
            del self.inbound[stream_id]
            if inbound.body == "chunked":
                data += b"0\r\n\r\n"
        out.append(Body(stream_id, data, event.flow_controlled_length, ended))

    def _trailers(self, event, out: list) -> None:
        stream_id = event.stream_id
        inbound = self.inbound.pop(stream_id, None)
        if inbound is None:
            return
        try:
            section = trailer_section(event.headers)
            if inbound.body == "length" and inbound.received != inbound.length:
                raise StreamError("Content-Length disagrees with the DATA sent")
        except StreamError as error:
            self._stream_error(stream_id, str(error), out, None)
            return
        # HTTP/1.1 carries trailers after a chunked body only; a Content-Length body's go.
        data = b"0\r\n" + section + b"\r\n" if inbound.body == "chunked" else b""
        out.append(Body(stream_id, data, 0, True))

    def _stream_error(self, stream_id: int, reason: str, out: list, now: float | None) -> None:
        self.inbound.pop(stream_id, None)
        self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
        out.append(Reset(stream_id, f"malformed: {reason}"))
        if now is not None:
            self._glitch(now)

    def _glitch(self, now: float) -> None:
        if not self.glitches.hit(now):
            self._calm("too many streams reset or malformed (rapid reset)")

    def _calm(self, reason: str) -> None:
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, reason.encode())
        raise ConnectionAbort(reason)

    # -- output ----------------------------------------------------------------------------
    def send_headers(self, stream_id: int, fields, end_stream: bool) -> None:
        self.h2.send_headers(stream_id, fields, end_stream=end_stream)

    def send_window(self, stream_id: int) -> int:
        """How many bytes of DATA the stream may send now (one frame at most)."""
        return min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)

    def send_data(self, stream_id: int, data, end_stream: bool) -> None:
        self.h2.send_data(stream_id, data, end_stream=end_stream)

    def send_trailers(self, stream_id: int, fields) -> None:
        self.h2.send_headers(stream_id, fields, end_stream=True)

    def acknowledge(self, stream_id: int, flow: int) -> None:
        """The session read flow bytes of the stream's DATA: the client may send more."""
        if flow:
            self.h2.acknowledge_received_data(flow, stream_id)

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        self.inbound.pop(stream_id, None)
        stream = self.h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self.h2.reset_stream(stream_id, code)

    def request_ended(self, stream_id: int) -> bool:
        return stream_id not in self.inbound

    def begin_goaway(self) -> None:
        """Draining: no new stream after the next round trip; finish_goaway() ends it."""
        if self.draining:
            return
        self.draining = True
        self.extra.append(PingFrame(0, opaque_data=_DRAIN_PING).serialize())
        self.extra.append(GoAwayFrame(0, last_stream_id=MAX_STREAM_ID).serialize())

    def finish_goaway(self) -> None:
        if self.last_stream_id is not None:
            return
        self.draining = True
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self.extra.append(GoAwayFrame(0, last_stream_id=self.last_stream_id).serialize())

    def data_to_send(self) -> bytes:
        data = self.h2.data_to_send()
        if self.extra:
            data += b"".join(self.extra)
            self.extra.clear()
        return data
