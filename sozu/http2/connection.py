"""One HTTP/2 client connection (worker only, gevent): its reader, its writer and its streams.

Theory of operation
-------------------
The connection's greenlet (the one the listener spawned) reads the socket and feeds the sans-IO
protocol (sozu.http2.protocol); each `Request` it yields becomes a `StreamSocket` and a greenlet
that runs the HTTP/1.1 connection edge (sozu.http.edge.serve) over it: the stream is routed,
balanced, forwarded, retried, logged and counted exactly like an HTTP/1.1 request. The stream socket
offers the socket methods the session uses (the same ones sozu.tls.TLSSocket offers):

  recv      the request head request_head() wrote, then the body as the client sends it; the
            DATA read is acknowledged then (WINDOW_UPDATE), so the client is never more than a
            window ahead of the backend; b"" once the request ended (the session's next
            request, which never comes);
  send      the session's HTTP/1.1 response, translated to HEADERS, DATA and trailers; DATA
            waits for the stream's send window, so a client that does not read makes the
            session wait, and its timeouts (front_timeout, armed by the session) end the stream;
  close     ends the stream: END_STREAM after a complete response, RST_STREAM otherwise, and
            RST_STREAM NO_ERROR when the client still sends a body nobody will read.

Writes are serialised by one lock: the holder sends everything the protocol has queued (its own
frames and other streams'), and the others wait for it, so a socket that does not drain stops
every writer instead of growing a buffer. A write cut short (a timeout thrown into the writer)
leaves the TLS stream unusable: the connection ends.

Deadlines (sozu.http.deadlines): while no stream is open the connection waits for the next one
within front_timeout (the first within request_timeout of the accept), then says GOAWAY and
closes; with streams open it waits without bound, each stream's session bounding its own waits.

Draining (soft stop, upgrade): the connection sits in the worker's idle set, whose members get
`shutdown()` when the worker drains; for an HTTP/2 connection that is the graceful GOAWAY pair
(sozu.http2.protocol), after which the streams in flight finish and the connection closes.
Clients retry the streams it refused on a new connection, to the new generation.

Cleartext (h2c) with prior knowledge, on plain HTTP listeners that enable it: `serve_cleartext`
looks at the first bytes with MSG_PEEK (sozu.http2.preface tells the preface from HTTP/1.x), so
that whichever side takes the connection reads it from its first byte, as after a TLS
handshake. While the bytes there are a strict prefix of the preface, the socket stays readable
with them unread: the wait for one byte more is on SO_RCVLOWAT, set one past them (the end of
the stream wakes it too). request_timeout from the accept bounds it.
"""
from __future__ import annotations

import collections
import logging
import math
import time
from time import monotonic

import gevent
import gevent.event
import gevent.lock
from gevent import socket
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from sozu.http.parser import ProtocolError
from sozu.http.edge import LINGER_SECONDS, serve as serve_exchange
from sozu.http.sockio import StreamSocketCalls, linger
from sozu.http2.preface import PREFACE, is_preface
from sozu.http2.protocol import (Body, ConnectionAbort, Http2Protocol, Request, Reset,
                                 ResponseTranslator, Truncated, WindowOpened)

log = logging.getLogger("sozu.http2")

READ_SIZE = 65536
DRAIN_ROUND_TRIP = 1.0  # s: the longest the first GOAWAY waits for its PING to come back


class StreamSocket(StreamSocketCalls):
    """One stream, as the client socket of an HTTP/1.1 session that carries its one request."""

    def __init__(self, connection: "Http2Connection", stream_id: int, start, ended: bool):
        self.connection = connection
        self.stream_id = stream_id
        self.inbound = collections.deque([(start.head, 0)])  # (bytes, flow to acknowledge)
        self.request_ended = ended
        self.error: OSError | None = None  # reset, or the connection is gone
        self.changed = gevent.event.Event()  # something to read, a window, an error
        self.response = ResponseTranslator(start.method)
        self.write_closed = False
        self.cut_short = False  # a write was interrupted (a deadline, a reset): see sendall
        self.closed = False
        self.timeout: float | None = None  # set by the session's closing steps only

    # -- what the connection tells ---------------------------------------------------------
    def deliver(self, data: bytes, flow: int, ended: bool) -> None:
        if data or flow:
            self.inbound.append((data, flow))
        if ended:
            self.request_ended = True
        self.changed.set()

    def fail(self, error: OSError) -> None:
        if self.error is None:
            self.error = error
        self.changed.set()

    def _wait(self) -> None:
        """Until the connection tells something. The session's deadlines bound the wait; its
        closing steps (an error answer, a lingering close) set a socket timeout instead."""
        self.changed.clear()
        if not self.changed.wait(self.timeout):
            raise socket.timeout("the stream made no progress in time")

    # -- what the session calls ------------------------------------------------------------
    def recv(self, size: int, flags: int = 0) -> bytes:
        while not self.inbound:
            if self.error is not None:
                raise self.error
            if self.request_ended or self.write_closed:
                return b""
            self._wait()
        data, flow = self.inbound[0]
        if len(data) > size:
            self.inbound[0] = (data[size:], flow)
            return data[:size]
        self.inbound.popleft()
        if flow:
            self.connection.acknowledge(self, flow)
        return data

    def sendall(self, data) -> None:
        if self.error is not None:
            raise self.error
        if self.write_closed:
            raise BrokenPipeError("the stream's response has ended")
        try:
            parts = self.response.feed(data)
        except ProtocolError as error:  # a bug upstream: the session wrote a bad response
            self.fail(ConnectionResetError(f"bad response for the stream: {error.message}"))
            self.connection.reset(self, ErrorCodes.INTERNAL_ERROR)
            raise self.error from None
        try:
            self.connection.send_parts(self, parts)
        except BaseException:
            # The translator has taken the response (all of it, when the backend's whole answer
            # came in one read), but not all of it went out: the stream can only be reset.
            self.cut_short = True
            raise

    def shutdown(self, how: int) -> None:
        """SHUT_WR: the session's response is complete (a lingering close follows)."""
        if how == socket.SHUT_WR:
            self._end_response()
        self.write_closed = True
        self.changed.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._end_response()
        except OSError as error:  # the client or the connection is gone: nothing to end
            log.debug("stream %d: %s", self.stream_id, error)
        finally:
            self.connection.stream_closed(self)

    def _end_response(self) -> None:
        if self.write_closed or self.error is not None:
            return
        self.write_closed = True
        try:
            parts = self.response.close()
        except Truncated:
            parts = None
        if parts is None or self.cut_short:
            self.connection.reset(self, ErrorCodes.INTERNAL_ERROR)
            return
        self.connection.send_parts(self, parts)
        if not self.request_ended:  # RFC 9113 §8.1: the body that still comes is not wanted
            self.connection.reset(self, ErrorCodes.NO_ERROR)

    def settimeout(self, timeout) -> None:
        self.timeout = timeout

    def gettimeout(self):
        return self.timeout

    def setsockopt(self, *args) -> None:
        """TCP options belong to the connection."""

    def getsockname(self):
        return self.connection.sock.getsockname()

    def getpeername(self):
        return self.connection.sock.getpeername()


class Http2Connection:
    def __init__(self, ctx, listener, sock, client_address):
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.client_address = client_address
        self.client_ip = client_address[0] if client_address else "-"
        self.protocol = Http2Protocol(listener.http2_max_concurrent_streams)
        self.streams: dict[int, StreamSocket] = {}
        self.write_lock = gevent.lock.Semaphore()
        self.broken = False
        self.served = False  # a first stream was opened: later waits are front_timeout
        # sozu.http.deadlines reads these three
        self.greenlet = gevent.getcurrent()
        self.deadline = self.filed_at = math.inf
        self.accepted = time.monotonic()

    # -- the reader ------------------------------------------------------------------------
    def run(self) -> None:
        self.flush()  # the server's SETTINGS
        ctx, listener = self.ctx, self.listener
        while True:
            if self.protocol.last_stream_id is not None and not self.streams:
                return  # drained
            if self.streams:
                ctx.deadlines.disarm(self)
            elif self.served:
                ctx.deadlines.arm(self, listener.front_timeout)
            else:
                ctx.deadlines.arm(self, self.accepted + listener.request_timeout - time.monotonic())
            try:
                data = self.sock.recv(READ_SIZE)
            except socket.timeout:
                self.say_goaway()
                return
            if not data:
                return
            try:
                actions = self.protocol.receive(data, monotonic())
            except ConnectionAbort as abort:
                ctx.metrics.incr("http2_connection_errors")
                log.info("%s: HTTP/2 connection closed: %s", self.client_ip, abort)
                self.flush()
                linger(self.sock, LINGER_SECONDS)  # the rest of a flood must not reset the GOAWAY
                return
            starting = [self.act(action) for action in actions]
            for stream in starting:
                if stream is not None:
                    self.start_stream(stream)
            self.flush()

    def act(self, action) -> StreamSocket | None:
        """Apply one protocol event; a new stream is returned, to start once the whole read is
        applied: one that the same read reset (rapid reset, a bad Content-Length) never starts."""
        kind = type(action)
        if kind is Body:
            stream = self.streams.get(action.stream_id)
            if stream is None or stream.closed:  # the session is done: nobody reads it
                self.protocol.acknowledge(action.stream_id, action.flow)
            else:
                stream.deliver(action.data, action.flow, action.ended)
        elif kind is Request:
            return self.open_stream(action)
        elif kind is WindowOpened:
            for stream in self.streams.values():
                stream.changed.set()
        elif kind is Reset:
            stream = self.streams.get(action.stream_id)
            if stream is not None:
                stream.fail(ConnectionResetError(action.reason))
            else:
                log.debug("%s: stream %d: %s", self.client_ip, action.stream_id, action.reason)
        return None

    def open_stream(self, request: Request) -> StreamSocket | None:
        # Streams the client reset while their session still waits on a backend count too:
        # the backends never carry more of this connection's requests than the limit.
        if len(self.streams) >= self.listener.http2_max_concurrent_streams:
            self.protocol.reset(request.stream_id, ErrorCodes.REFUSED_STREAM)
            self.ctx.metrics.incr("http2_streams_refused")
            return None
        self.served = True
        stream = StreamSocket(self, request.stream_id, request.start, request.ended)
        self.streams[request.stream_id] = stream
        return stream

    def start_stream(self, stream: StreamSocket) -> None:
        if stream.error is not None:
            log.debug("%s: stream %d ended before it started: %s", self.client_ip, stream.stream_id,
                      stream.error)
            stream.closed = True
            self.stream_closed(stream)
            return
        gevent.spawn(serve_exchange, self.ctx, self.listener, stream, self.client_address)

    # -- what streams call -----------------------------------------------------------------
    def send_parts(self, stream: StreamSocket, parts) -> None:
        """A stream's response parts, in as few writes as the windows allow: a head and a body
        that fit go out in one TLS record, not one each."""
        for part in parts:
            self._queue_part(stream, part)
        self.flush()

    def _queue_part(self, stream: StreamSocket, part) -> None:
        protocol, stream_id = self.protocol, stream.stream_id
        try:
            if part[0] == "headers":
                protocol.send_headers(stream_id, part[1], part[2])
            elif part[0] == "trailers":
                protocol.send_trailers(stream_id, part[1])
            else:
                data, end = memoryview(part[1]), part[2]
                while True:
                    if stream.error is not None:
                        raise stream.error
                    window = protocol.send_window(stream_id)
                    if window <= 0 and data:
                        self.flush()  # what is queued goes out before the wait
                        stream._wait()  # a WINDOW_UPDATE, a reset, or the session's deadline
                        continue
                    piece = data[:window]
                    data = data[len(piece):]
                    protocol.send_data(stream_id, piece, end and not data)
                    if not data:
                        break
                    self.flush()
        except H2Error as error:  # the stream closed under us (reset by the client)
            raise ConnectionResetError(f"stream {stream_id}: {error}") from None

    def acknowledge(self, stream: StreamSocket, flow: int) -> None:
        try:
            self.protocol.acknowledge(stream.stream_id, flow)
        except H2Error:
            return  # the connection is closing
        self.flush()

    def reset(self, stream: StreamSocket, code: ErrorCodes) -> None:
        try:
            self.protocol.reset(stream.stream_id, code)
        except H2Error:
            return
        self.flush()

    def stream_closed(self, stream: StreamSocket) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.ctx.draining and not self.protocol.draining:
            gevent.spawn(self.drain)
        elif self.protocol.last_stream_id is not None and not self.streams:
            self.stop_reading()
        elif not self.streams:  # idle from now on: the reader waits within front_timeout
            self.ctx.deadlines.arm(self, self.listener.front_timeout)

    def flush(self) -> None:
        """Send what the protocol has queued; the lock makes one writer at a time."""
        if self.broken:
            raise ConnectionResetError("the connection is closed")
        with self.write_lock:
            data = self.protocol.data_to_send()
            if not data:
                return
            try:
                self.sock.sendall(data)
            except BaseException:
                # Part of a TLS record may be out: nothing more can be written on this stream.
                self.broken = True
                for stream in self.streams.values():
                    stream.fail(ConnectionResetError("the connection failed"))
                raise

    # -- ending ----------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """The worker drains (its idle set calls this): the graceful GOAWAY, in its greenlet."""
        gevent.spawn(self.drain)

    def drain(self) -> None:
        protocol = self.protocol
        if protocol.draining:
            return
        try:
            protocol.begin_goaway()
            self.flush()
            deadline = time.monotonic() + DRAIN_ROUND_TRIP
            while protocol.last_stream_id is None and time.monotonic() < deadline:
                gevent.sleep(0.05)  # the reader sees the PING come back
            protocol.finish_goaway()
            self.flush()
        except OSError as error:
            log.debug("%s: draining: %s", self.client_ip, error)
        if not self.streams:
            self.stop_reading()

    def say_goaway(self) -> None:
        """An idle connection's end: no stream was lost."""
        try:
            self.protocol.finish_goaway()
            self.flush()
        except OSError:
            pass  # a courtesy only

    def stop_reading(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already closed

    def close(self) -> None:
        self.ctx.deadlines.disarm(self)
        for stream in list(self.streams.values()):
            stream.fail(ConnectionResetError("the connection ended"))
        self.broken = True
        self.sock.close()


def serve(ctx, listener, sock, client_address) -> None:
    """The connection greenlet of an h2 connection: one of the places where errors are caught."""
    connection = Http2Connection(ctx, listener, sock, client_address)
    ctx.metrics.incr("http2_connections")
    ctx.idle_sockets.add(connection)
    try:
        sock.settimeout(None)  # the handshake had its own; from here on, deadlines
        connection.run()
    except OSError as error:
        log.debug("%s: HTTP/2 connection ended: %s", connection.client_ip, error)
    except Exception:  # the connection edge (docs/architecture.md, "Errors"): never the worker
        log.exception("%s: unexpected error; the HTTP/2 connection is closed", connection.client_ip)
    finally:
        ctx.idle_sockets.discard(connection)
        connection.close()


def serve_cleartext(ctx, listener, sock, client_address, serve_http) -> None:
    """A plain HTTP listener with h2c_prior_knowledge: HTTP/2 for a client that opens with the
    preface, serve_http (HTTP/1.x) for any other. Until one of them takes the connection, this
    is where its errors are caught."""
    client_ip = client_address[0] if client_address else "-"
    try:
        http2 = _opens_with_preface(sock, time.monotonic() + listener.request_timeout)
    except socket.timeout:  # a beginning of the preface, and no more: maybe HTTP/2, so no 408
        ctx.metrics.incr("h2c_preface_timeouts")
        log.debug("%s: no request or HTTP/2 preface in time", client_ip)
        try:  # read what it sent: closing with unread input would reset the connection
            sock.settimeout(0)
            sock.recv(len(PREFACE))
        except OSError:
            pass  # nothing there, or gone already: closing is all that is left
        sock.close()
        return
    except OSError as error:
        log.debug("%s: connection ended before its first request: %s", client_ip, error)
        sock.close()
        return
    except Exception:  # the connection edge: never the worker
        log.exception("%s: unexpected error while reading the first bytes", client_ip)
        sock.close()
        return
    (serve if http2 else serve_http)(ctx, listener, sock, client_address)


def _opens_with_preface(sock, deadline: float) -> bool:
    """Whether the connection's first bytes are the HTTP/2 preface, none of them consumed."""
    seen = 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no request or HTTP/2 preface in time")
            sock.settimeout(remaining)
            start = sock.recv(len(PREFACE), socket.MSG_PEEK)
            verdict = is_preface(start)
            if verdict is not None:
                return verdict
            if len(start) == seen:  # readable without a byte more: the client closed its side
                return False
            seen = len(start)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, seen + 1)
            socket.wait_read(sock.fileno(), remaining,
                             socket.timeout("no request or HTTP/2 preface in time"))
    finally:
        if seen:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
