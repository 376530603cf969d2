"""sozu.http2.protocol without sockets: an h2 client connection talks to it in memory."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from hypothesis import given
from hypothesis import strategies as st
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

from sozu.http.parser import ProtocolError, parse_request_head
from sozu.http2.protocol import (FLOOD_LIMIT, ChunkedDecoder, ConnectionAbort, Http2Protocol, RateLimit,
                                 Request, Reset, ResponseTranslator, StreamError, Truncated, request_head)

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/p?q=1"), (b":authority", b"a.test")]


class Pair:
    """A client h2 connection wired to a server Http2Protocol."""

    def __init__(self, max_concurrent_streams: int = 100):
        self.server = Http2Protocol(max_concurrent_streams)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.client.initiate_connection()
        self.now = 0.0
        self.to_server()
        self.to_client()

    def to_server(self) -> list:
        return self.server.receive(self.client.data_to_send(), self.now)

    def to_client(self) -> list:
        return self.client.receive_data(self.server.data_to_send())


# --- request heads ----------------------------------------------------------------------------

def test_a_request_head_is_the_http11_head_it_means():
    start = request_head(BASE + [(b"accept", b"*/*"), (b"cookie", b"a=1; b=2")], end_stream=True)
    assert start.head == (b"GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n")
    head, used = parse_request_head(start.head)
    assert (head.host, head.path, used, start.body) == ("a.test", b"/p", len(start.head), "none")


def test_bodies_are_framed_by_length_or_chunked():
    with_length = request_head(BASE + [(b"content-length", b"5")], end_stream=False)
    assert (with_length.body, with_length.content_length) == ("length", 5)
    chunked = request_head(BASE, end_stream=False)
    assert chunked.body == "chunked" and chunked.head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert request_head(BASE + [(b"content-length", b"0")], end_stream=True).body == "none"


def test_host_without_authority_and_matching_host():
    no_authority = [f for f in BASE if f[0] != b":authority"] + [(b"host", b"b.test")]
    assert b"host: b.test\r\n" in request_head(no_authority, True).head
    same = request_head(BASE + [(b"host", b"A.TEST")], True).head
    assert same.count(b"host:") == 1 and b"host: a.test\r\n" in same


@pytest.mark.parametrize("fields, end_stream", [
    (BASE + [(b"connection", b"close")], True),
    (BASE + [(b"keep-alive", b"1")], True),
    (BASE + [(b"transfer-encoding", b"chunked")], False),
    (BASE + [(b"upgrade", b"websocket")], True),
    (BASE + [(b"te", b"gzip")], True),
    (BASE + [(b"X-Upper", b"1")], True),
    (BASE + [(b"x-bad", b"a\r\nx-injected: 1")], True),
    (BASE + [(b"x-bad", b" leading space")], True),
    (BASE + [(b"host", b"b.test")], True),
    (BASE + [(b"content-length", b"3")], True),             # a length, no DATA
    (BASE + [(b"content-length", b"3"), (b"content-length", b"4")], False),
    (BASE + [(b"content-length", b"-1")], False),
    ([(b"accept", b"*/*")] + BASE, True),                    # pseudo-header after a field
    (BASE + [(b":method", b"POST")], True),                 # repeated
    (BASE + [(b":protocol", b"websocket")], True),          # not offered
    (BASE + [(b":status", b"200")], True),
    ([f for f in BASE if f[0] != b":path"], True),
    ([f for f in BASE if f[0] != b":method"], True),
    ([f if f[0] != b":path" else (b":path", b"p") for f in BASE], True),
])
def test_malformed_requests_are_stream_errors(fields, end_stream):
    with pytest.raises(StreamError):
        request_head(fields, end_stream)


def test_te_trailers_is_allowed():
    assert b"te: trailers" in request_head(BASE + [(b"te", b"trailers")], True).head


# --- the connection ---------------------------------------------------------------------------

def test_a_request_with_a_body_without_length_is_chunked_with_its_trailers():
    pair = Pair()
    pair.client.send_headers(1, BASE, end_stream=False)
    pair.client.send_data(1, b"hello")
    pair.client.send_headers(1, [(b"x-sum", b"5")], end_stream=True)
    actions = pair.to_server()
    request, body, trailers = actions
    assert type(request) is Request and request.start.body == "chunked" and not request.ended
    assert (body.data, body.flow, body.ended) == (b"5\r\nhello\r\n", 5, False)
    assert (trailers.data, trailers.ended) == (b"0\r\nx-sum: 5\r\n\r\n", True)


@pytest.mark.parametrize("declared, sent", [(b"3", [b"12345"]), (b"3", [b"12"]), (b"3", [b"1", b"234"])])
def test_content_length_disagreeing_with_data_resets_the_stream_only(declared, sent):
    pair = Pair()
    pair.client.send_headers(1, BASE + [(b"content-length", declared)], end_stream=False)
    for index, piece in enumerate(sent):
        pair.client.send_data(1, piece, end_stream=index == len(sent) - 1)
    actions = pair.to_server()
    assert type(actions[-1]) is Reset and "Content-Length" in actions[-1].reason
    events = pair.to_client()
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.PROTOCOL_ERROR
               for e in events)
    pair.client.send_headers(3, BASE, end_stream=True)  # the connection goes on
    assert type(pair.to_server()[0]) is Request


def test_received_data_is_acknowledged_only_once_read():
    pair = Pair()
    pair.client.send_headers(1, BASE, end_stream=False)
    for _ in range(4):
        pair.client.send_data(1, b"x" * 15000)
    pair.to_server()
    pair.to_client()
    assert pair.client.local_flow_control_window(1) == 65535 - 60000  # nothing given back
    pair.server.acknowledge(1, 60000)
    pair.to_client()
    assert pair.client.local_flow_control_window(1) == 65535


def test_a_response_goes_out_as_headers_data_and_trailers():
    pair = Pair()
    pair.client.send_headers(1, BASE, end_stream=True)
    pair.to_server()
    translator = ResponseTranslator(b"GET")
    parts = translator.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                            b"Connection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\nX-Check: 1\r\n\r\n")
    assert parts == [("headers", [(b":status", b"200"), (b"content-type", b"text/plain")], False),
                     ("data", b"hello", False), ("trailers", [(b"x-check", b"1")])]
    pair.server.send_headers(1, parts[0][1], False)
    pair.server.send_data(1, parts[1][1], False)
    pair.server.send_trailers(1, parts[2][1])
    events = pair.to_client()
    kinds = [type(e) for e in events]
    assert h2.events.TrailersReceived in kinds and h2.events.StreamEnded in kinds


# --- limits and floods ------------------------------------------------------------------------

def test_rapid_reset_ends_the_connection_with_enhance_your_calm():
    pair = Pair()
    with pytest.raises(ConnectionAbort, match="rapid reset"):
        for stream_id in range(1, 2 * FLOOD_LIMIT + 10, 2):
            pair.client.send_headers(stream_id, BASE, end_stream=True)
            pair.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            pair.to_server()
    events = pair.to_client()
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == ErrorCodes.ENHANCE_YOUR_CALM
               for e in events)


def test_resets_spread_over_time_are_fine():
    pair = Pair()
    for stream_id in range(1, 4 * FLOOD_LIMIT, 2):
        pair.now += 0.2  # 5 a second: under 100 in 10 s
        pair.client.send_headers(stream_id, BASE, end_stream=True)
        pair.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        pair.to_server()


@pytest.mark.parametrize("flood", ["ping", "settings"])
def test_ping_and_settings_floods(flood):
    pair = Pair()
    with pytest.raises(ConnectionAbort, match=flood.upper()):
        for _ in range(FLOOD_LIMIT + 1):
            if flood == "ping":
                pair.client.ping(b"12345678")
            else:
                pair.client.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
            pair.to_server()


def raw_headers(pair, stream_id: int) -> bytes:
    """A HEADERS frame h2's client would refuse to send."""
    frame = HeadersFrame(stream_id)
    frame.data = pair.client.encoder.encode(BASE)
    frame.flags = {"END_STREAM", "END_HEADERS"}
    return frame.serialize()


def sent_frames(data: bytes) -> list:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def test_more_streams_than_advertised_is_a_connection_error():
    pair = Pair(max_concurrent_streams=2)
    pair.client.send_headers(1, BASE, end_stream=True)
    pair.client.send_headers(3, BASE, end_stream=True)
    pair.to_server()
    with pytest.raises(ConnectionAbort, match="TooManyStreams"):
        pair.server.receive(raw_headers(pair, 5), 0.0)


def test_graceful_goaway_refuses_streams_after_the_last_one():
    pair = Pair()
    pair.client.send_headers(1, BASE, end_stream=True)
    pair.to_server()
    pair.server.begin_goaway()
    ping, first = sent_frames(pair.server.data_to_send())
    assert (type(ping), type(first), first.last_stream_id) == (PingFrame, GoAwayFrame, 2**31 - 1)
    late = raw_headers(pair, 3)  # the client opened it before it saw the GOAWAY: still served
    ack = PingFrame(0, opaque_data=ping.opaque_data)
    ack.flags = {"ACK"}
    assert type(pair.server.receive(late + ack.serialize(), 0.0)[0]) is Request
    (final,) = sent_frames(pair.server.data_to_send())
    assert (type(final), final.last_stream_id, final.error_code) == (GoAwayFrame, 3, 0)
    assert pair.server.receive(raw_headers(pair, 5), 0.0) == []  # after the final GOAWAY: refused
    (refused,) = sent_frames(pair.server.data_to_send())
    assert (type(refused), refused.stream_id, refused.error_code) == (RstStreamFrame, 5, ErrorCodes.REFUSED_STREAM)
    pair.server.send_headers(1, [(b":status", b"200")], end_stream=True)  # stream 1 is still served
    assert type(sent_frames(pair.server.data_to_send())[0]) is HeadersFrame


def test_rate_limit_window():
    limit = RateLimit(2, 10.0)
    assert [limit.hit(0.0), limit.hit(1.0), limit.hit(2.0)] == [True, True, False]
    assert limit.hit(10.5)


# --- the response translator ------------------------------------------------------------------

def test_head_204_304_and_1xx():
    head = ResponseTranslator(b"HEAD")
    assert head.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") == [
        ("headers", [(b":status", b"200"), (b"content-length", b"10")], True)]
    assert head.done
    for status in (b"204", b"304"):
        assert ResponseTranslator(b"GET").feed(b"HTTP/1.1 " + status + b" X\r\n\r\n")[0][2] is True
    early = ResponseTranslator(b"GET")
    parts = early.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parts == [("headers", [(b":status", b"100")], False),
                     ("headers", [(b":status", b"200"), (b"content-length", b"2")], False),
                     ("data", b"ok", True)]


def test_a_read_until_close_body_ends_at_close_and_a_short_one_is_truncated():
    until_close = ResponseTranslator(b"GET")
    until_close.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
    assert until_close.close() == [("data", b"", True)]
    short = ResponseTranslator(b"GET")
    short.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(Truncated):
        short.close()
    with pytest.raises(ProtocolError):
        ResponseTranslator(b"GET").feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab")


CHUNKED = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"


@given(st.lists(st.integers(0, len(CHUNKED)), max_size=6))
def test_chunked_decoding_does_not_depend_on_where_reads_split(cuts):
    decoder, data, trailers = ChunkedDecoder(), b"", None
    edges = [0, *sorted(cuts), len(CHUNKED)]
    for start, end in zip(edges, edges[1:]):
        if end == start:
            continue
        pieces, trailers = decoder.feed(CHUNKED[start:end])
        data += b"".join(pieces)
    assert (data, trailers) == (b"abc0123456789abcdef", [(b"x-t", b"1")])
