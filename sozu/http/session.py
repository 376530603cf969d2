"""One client connection of an HTTP listener, proxied in one greenlet (worker only, gevent).

Theory of operation
-------------------
A session loops over the requests of a keep-alive connection:

  wait for the first byte (the first request: request_timeout from the accept; later ones:
     front_timeout, an idle keep-alive connection, closed quietly; a draining worker closes
     those at once, but serves the first request of a connection it has accepted)
  -> read the whole head (request_timeout: slowloris costs a slot no longer; 408)
  -> parse it strictly (sozu.http.parser; a bad request never reaches a backend)
  -> route (host, path) to an application, pick a backend, connect (connect_timeout; a failed
     connect marks the backend down and moves on to the next: one dead backend costs no user a
     failed request while another is up)
  -> forward the rewritten head, stream the body (in buffer_size pieces; a body larger than
     one piece borrows a buffer of 16 pieces from the worker: sozu.http.buffers)
  -> read the backend's head (back_timeout: 504), forward it rewritten, stream its body
  -> give the backend connection back to the worker's pool when it can carry another request.

Each timeout above bounds the wait that follows it: the session arms a deadline before the wait
(`arm()`) and the worker's Deadlines greenlet throws socket.timeout into the session if it is
still waiting then (sozu.http.deadlines). The sockets themselves have no timeout, which spares
gevent a timer per wait: a third of the CPU of a small request.

Bodies are never held whole: Content-Length bodies are copied by count, chunked bodies are
forwarded as they are while a ChunkedFramer checks their framing (what arrived with the head is
checked before a backend is chosen, so a smuggling attempt sent in one piece reaches none),
read-until-close bodies end the client connection. Header lines that are only forwarded are not
re-parsed; only hop-by-hop headers are removed, the sticky cookie taken out of Cookie, and the
X-Forwarded-*/Forwarded/Sozu-Id headers added. sozu answers its clients in HTTP/1.1 whatever the
backend's version. An HTTP/1.0 request goes to the backend as HTTP/1.0 with `Connection: close`
(that backend connection is not reused); a backend that answers it chunked anyway has its body
forwarded as it is, with `Connection: close`.

Two failures are recovered from where they happen, not at the edge: a pooled backend connection
that the backend closed as it was reused (no byte of a response) is retried once on a fresh one
when the request has no body and may be repeated (`StaleConnection`: the pool checks every
connection before reuse, but a close can race the check); and a backend that stops reading the
request body (it answered 413 or 401 early) still has its answer read and forwarded
(`BackendStoppedReading`).

Every other error ends the connection at one place, `serve()`: an `Answer` exception carries the
status to answer (with `Connection: close`) if nothing of a response has been sent yet; a client
that went away is closed quietly; a backend failing after the response head was sent (`Aborted`)
ends the connection, which the client sees as a truncated body; anything else is a bug, logged
once with its traceback and answered 500. When the client may still be sending (after an error
answer, or an early backend answer), the session reads and drops its input for a moment before
closing (a "lingering close", as nginx does): closing with unread input makes the kernel reset
the connection, and a reset can destroy the answer before the client has read it.
"""
from __future__ import annotations

import logging
import math
import os
import time
from itertools import count
from time import monotonic

import gevent
from gevent import socket

from sozu import access_log as access_lines
from sozu import proxy_protocol
from sozu.http import answers, headers, rules
from sozu.http.parser import (DEFAULT_LIMITS, ChunkedFramer, ProtocolError, parse_request_head,
                              parse_response_head)
from sozu.listeners import connect
from sozu.relay import Relay

log = logging.getLogger("sozu.http")
access_log = logging.getLogger("sozu.access")

SENDS_PROXY = ("SendHeader", "RelayHeader")
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A partial head is parsed again only when a line may have ended or it grew this much: a client
# sending one byte at a time must not cost a parse of the whole buffer per byte.
REPARSE_GROWTH = 4096
# The read that brings a response head asks for this many buffer_size pieces (80 KiB by
# default): a head with a body of up to 64 KiB then comes in one read and leaves in one send.
# (bytes of that size are allocated without being filled, and shrunk to what arrived.)
RESPONSE_READ_PIECES = 5
LINGER_SECONDS = 2.0  # the longest an error answer waits for the client to stop sending
ROUTINE = frozenset((301, 302, 307, 308, 404))  # answers logged at debug level: redirects, no route


def _new_request_ids() -> None:
    """Sozu-Id = random per-process prefix + counter: unique across workers and restarts."""
    global _id_prefix, _request_ids
    _id_prefix = os.urandom(6).hex().encode() + b"-"
    _request_ids = count()


_new_request_ids()
os.register_at_fork(after_in_child=_new_request_ids)


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


class BackendSocket(socket.socket):
    """A backend connection, with the start of a response head that came in several reads."""

    pending: bytearray
    private = False  # carries one client's requests only (PROXY protocol): never pooled
    idle_since: float  # set by the backend pool


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


class HttpSession:
    def __init__(self, ctx, listener, sock, client_address):
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.client_address = client_address
        self.client_ip = client_address[0] if client_address else "-"
        self.client_ip_bytes = self.client_ip.encode()
        self.accepted = time.monotonic()
        self.buf = bytearray()
        self.response_started = False
        self.keep_alive = True
        self.exchange: Exchange | None = None
        self.request_id = b"-"
        self.body_unread = False  # the client may still be sending: read it before closing
        # Timeouts (sozu.http.deadlines): the sockets have none; each wait is bounded by the
        # deadline armed before it, enforced by the worker's Deadlines greenlet.
        self.greenlet = gevent.getcurrent()
        self.deadline = self.filed_at = math.inf
        self.body_buffer = None  # lent by the worker while a large body is copied
        self.route = None  # the front of the request being proxied (sozu.router.Route)

    def recv_piece(self, sock, limit: int | None):
        """A piece of a body (at most limit bytes; None: no limit) read from sock: bytes, or a
        view into the session's large buffer, valid until the next read. A body that needs
        more than one buffer_size piece borrows a large buffer from the worker for the rest of
        the exchange (sozu.http.buffers): one system call per 16 pieces instead of one per piece."""
        size = self.ctx.buffer_size
        buffer = self.body_buffer
        if buffer is None and (limit is None or limit > size):
            buffer = self.body_buffer = self.ctx.body_buffers.take()
        if buffer is None:  # a small rest, or every large buffer is lent
            return sock.recv(size if limit is None or limit > size else limit)
        if limit is None or limit > len(buffer):
            limit = len(buffer)
        return buffer[:sock.recv_into(buffer, limit)]

    def give_back_body_buffer(self) -> None:
        if self.body_buffer is not None:
            self.ctx.body_buffers.give(self.body_buffer)
            self.body_buffer = None

    def arm(self, seconds: float) -> None:
        """Deadlines.arm, inlined."""
        self.deadline = deadline = monotonic() + seconds
        if deadline < self.filed_at:
            self.ctx.deadlines.file(self)

    # -- the request loop -------------------------------------------------------------------
    def run(self) -> None:
        # The first request is served even when the worker began to drain after the accept:
        # no client retries a request on a connection it has just opened. Between requests, a
        # draining worker ends the connection (clients retry on a reused connection).
        first = True
        while True:
            parsed = self.read_request_head(first)
            if parsed is None:
                return
            first = False
            head, used = parsed
            del self.buf[:used]
            self.exchange = Exchange(head.method, head.host, head.path)
            self.request_id = b"-"  # until a backend is asked (or an error answer needs one)
            self.exchange.bytes_in = used
            self.proxy(head)
            self.finish_exchange()
            if not self.keep_alive or self.ctx.draining:
                return

    def read_request_head(self, first: bool):
        """(head, bytes used), or None when the connection ended quietly before a request."""
        listener, buf = self.listener, self.buf
        if first:
            deadline = self.accepted + listener.request_timeout
            if not buf and not self.wait_first_bytes(deadline - time.monotonic(), idle=False):
                return None
        else:
            if not buf and not self.wait_first_bytes(listener.front_timeout, idle=True):
                return None
            deadline = time.monotonic() + listener.request_timeout
        new, parsed_size = buf, -REPARSE_GROWTH
        while True:
            if b"\n" in new or len(buf) - parsed_size >= REPARSE_GROWTH:
                parsed_size = len(buf)
                try:
                    parsed = parse_request_head(buf, DEFAULT_LIMITS)
                except ProtocolError as error:
                    raise Answer(error.status_hint, error.message) from None
                if parsed is not None:
                    return parsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Answer(408)
            self.arm(remaining)
            try:
                new = self.sock.recv(self.ctx.buffer_size)
            except socket.timeout:
                raise Answer(408) from None
            except OSError as error:
                raise ClientGone(str(error)) from None
            if not new:
                raise ClientGone("closed in the middle of a request head")
            buf += new

    def wait_first_bytes(self, timeout: float, idle: bool) -> bool:
        """Nothing of a request yet. idle: a keep-alive connection between requests, which the
        worker may close to drain (a new connection is not: its request is awaited)."""
        if timeout <= 0:
            return False
        if idle:
            self.ctx.idle_sockets.add(self.sock)
        try:
            self.arm(timeout)
            if idle:  # the answer was just sent: the next request cannot be here yet
                wait_readable(self.sock)
            data = self.sock.recv(self.ctx.buffer_size)
        except OSError:  # timeout included: an idle connection ends quietly, as in nginx
            return False
        finally:
            if idle:
                self.ctx.idle_sockets.discard(self.sock)
        if not data:
            return False
        self.buf += data
        return True

    def client_recv_body(self, limit: int | None = None):
        """A piece of a request body (at most limit bytes), within front_timeout."""
        self.arm(self.listener.front_timeout)
        try:
            data = self.recv_piece(self.sock, limit)
        except socket.timeout:
            raise Answer(408, "the request body stopped arriving") from None
        except OSError as error:
            raise ClientGone(str(error)) from None
        if not data:
            raise ClientGone("closed in the middle of a request body")
        return data

    def client_send(self, data, more=b"") -> None:
        self.arm(self.listener.front_timeout)
        try:
            send_all(self.sock, data, more)
        except OSError as error:
            raise ClientGone(str(error)) from None
        self.exchange.bytes_out += len(data) + len(more)

    # -- one exchange -----------------------------------------------------------------------
    def proxy(self, head) -> None:
        ctx, listener, exchange = self.ctx, self.listener, self.exchange
        self.keep_alive = head.keep_alive
        route = ctx.router.route_http(listener.address, head.host, head.path, listener.https, head.method)
        if route is None:
            raise Answer(404)
        exchange.app_id = app_id = route.app_id
        application = ctx.applications.get(app_id)
        if application is None:  # removed between routing tables: same as no route
            exchange.app_id = "-"
            raise Answer(404)
        if application["https_redirect"] and not listener.https:
            location = b"https://" + head.host.encode() + headers.origin_form(head.target)
            raise Answer(301, body=answers.redirect_answer(location))
        # The front's own rules (sozu.http.rules): a redirect, or the head the backend sees.
        if route.redirect is not None:
            raise Answer(route.redirect["status"], body=rules.redirect(route, head, listener.https))
        self.route, original = route, head
        head = rules.forwarded(route, head)
        if head is not original:
            exchange.rewritten = f"{head.host}{head.path.decode('latin-1')}"
        body = head.content_length is not None and head.content_length > 0 or head.chunked
        sticky = application["sticky_session"]
        sticky_id = headers.sticky_cookie(head, listener.sticky_name) if sticky else None
        framer = self.check_chunked_start() if head.chunked else None
        replayable = not body and head.method in IDEMPOTENT
        # A backend that reads a PROXY header learns the client from its connection: such a
        # connection carries this client's requests only, so it is never taken from the pool.
        fresh = application["proxy_protocol"] in SENDS_PROXY
        while True:
            backend, connection, reused = self.connect_backend(app_id, application, sticky_id, fresh)
            try:
                self.forward_request(head, connection, body, sticky, framer)
                self.forward_response(head, application, backend, connection, sticky_id)
                return
            except StaleConnection:
                # The backend closed an idle pooled connection as we reused it. A request whose
                # body was not consumed and that may be repeated is retried on a fresh one.
                connection.close()
                if not (reused and not fresh and replayable):
                    raise Answer(502, "the backend closed the connection without answering") from None
                fresh = True
            except BaseException:
                connection.close()  # the backend must see the end of a request we abandon
                raise
            finally:
                ctx.balancer_release(app_id, backend)

    def connect_backend(self, app_id, application, sticky_id, fresh: bool):
        """(backend, connection, reused) for the application (the worker's connect_backend):
        an idle pooled connection unless `fresh`, else a new one; 503 when none is reached."""
        ctx, listener = self.ctx, self.listener
        # The connect has its own bound (connect_timeout): the deadline of the state before it
        # (request_timeout of a head, back_timeout of a request sent to a stale connection)
        # thrown into it would mark a healthy backend down, or cut a report to the master.
        ctx.deadlines.disarm(self)
        reuse = None if fresh else (lambda backend: ctx.backend_pool.get(backend.address))
        backend, connection, reused = ctx.connect_backend(
            app_id, lambda address: self.open_backend(address, listener.connect_timeout), sticky_id, reuse)
        if backend is None:
            raise Answer(503, "no backend could be reached")
        self.exchange.backend = backend.address
        self.exchange.connected = monotonic()
        if not reused and application["proxy_protocol"] in SENDS_PROXY:
            connection.private = True
            self.send_proxy_header(connection, application.get("send_proxy_version", 2))
        return backend, connection, reused

    def send_proxy_header(self, connection, version: int) -> None:
        destination = self.sock.getsockname()[:2]
        source = self.client_address[:2] if self.client_address else None
        try:
            send_all(connection, proxy_protocol.encode(version, source, destination))
        except OSError as error:
            raise Answer(502, f"sending the PROXY header failed: {error}") from None

    def error_answer(self, status: int, detail: str) -> bytes:
        """The answer for an error status: the application's custom answer for it, else the
        listener's, else sozu's own (sozu.http.answers)."""
        app_id = self.exchange.app_id if self.exchange is not None else "-"
        application = self.ctx.applications.get(app_id) if app_id != "-" else None
        text = application.get(f"answer_{status}") if application is not None else None
        template = answers.template(text) if text else self.listener.answers.get(status)
        if template is None:
            return answers.default_answer(status, detail)
        if self.request_id == b"-":  # answered before any backend was asked: an id of its own
            self.request_id = _id_prefix + b"%x" % next(_request_ids)
        message = answers.EXPLANATIONS.get(status, "") + (f" {detail}" if detail else "")
        return template.render(self.request_id, app_id, status, message)

    @staticmethod
    def open_backend(address: str, timeout: float):
        connection = connect(address, timeout, BackendSocket)
        connection.settimeout(None)  # from here on, the session's deadlines bound its waits
        connection.pending = bytearray()
        return connection

    # -- request ----------------------------------------------------------------------------
    def forward_request(self, head, connection, body: bool, sticky: bool, framer) -> None:
        self.request_id = request_id = _id_prefix + b"%x" % next(_request_ids)
        data = headers.request_head(head, self.client_ip_bytes, self.listener, request_id,
                                    self.listener.sticky_name if sticky else None)
        self.arm(self.listener.back_timeout)
        try:
            send_all(connection, data)
        except OSError:
            raise StaleConnection() from None
        if not body:
            return
        if head.expect_continue:
            # Like nginx: sozu says "continue" itself once a backend is ready, so a backend
            # that ignores Expect cannot leave the client waiting.
            self.client_send(CONTINUE)
        try:
            if framer is not None:
                self.copy_chunked_request(connection, framer)
            else:
                self.copy_request_length(connection, head.content_length)
        except BackendStoppedReading as stopped:
            # Its answer, if it sent one, is forwarded; the client's connection then ends, since
            # the rest of its body was never read.
            log.debug("%s: %s; reading its answer", _describe(self), stopped)
            self.keep_alive = False
            self.body_unread = True

    def copy_request_length(self, connection, remaining: int) -> None:
        buf, exchange = self.buf, self.exchange
        if buf:
            piece = bytes(buf[:remaining])
            del buf[:len(piece)]
            self.backend_send(connection, piece)
            remaining -= len(piece)
            exchange.bytes_in += len(piece)
        while remaining > 0:
            data = self.client_recv_body(remaining)
            self.backend_send(connection, data)
            remaining -= len(data)
            exchange.bytes_in += len(data)

    def check_chunked_start(self) -> ChunkedFramer:
        """Check what already arrived of a chunked body before a backend sees a byte of the
        request: a smuggling attempt sent in one piece with its head reaches no backend."""
        framer = ChunkedFramer(DEFAULT_LIMITS, 400)
        try:
            self.chunked_checked = framer.feed(self.buf) if self.buf else 0
        except ProtocolError as error:
            raise Answer(error.status_hint, error.message) from None
        return framer

    def copy_chunked_request(self, connection, framer: ChunkedFramer) -> None:
        buf, exchange = self.buf, self.exchange
        if self.chunked_checked:
            data = bytes(buf[:self.chunked_checked])
            del buf[:len(data)]
            self.backend_send(connection, data)
            exchange.bytes_in += len(data)
        while not framer.done:
            data = self.client_recv_body()
            try:
                used = framer.feed(data)
            except ProtocolError as error:
                raise Answer(error.status_hint, error.message) from None
            if used < len(data):  # the start of a pipelined request
                buf += data[used:]
                data = data[:used]
            self.backend_send(connection, data)
            exchange.bytes_in += used

    def backend_send(self, connection, data) -> None:
        self.arm(self.listener.back_timeout)
        try:
            send_all(connection, data)
        except socket.timeout:
            raise Answer(504, "the backend stopped reading the request body") from None
        except OSError as error:
            raise BackendStoppedReading(f"sending the request body failed: {error}") from None

    # -- response ---------------------------------------------------------------------------
    def read_response_head(self, connection, method: bytes, carried=b""):
        """(head, rest): the backend's response head and the bytes that came after it (the start
        of its body). When the head came in one read, the usual case, rest is a view of what
        that read returned: the body start is forwarded without a copy. carried: what followed
        a 1xx head, which may hold the next head."""
        pending = connection.pending  # a head that needs several reads
        pending += carried
        source = pending
        while True:
            if source:
                try:
                    parsed = parse_response_head(source, method, DEFAULT_LIMITS)
                except ProtocolError as error:
                    raise Answer(502, error.message) from None
                if parsed is not None:
                    head, used = parsed
                    if source is not pending:
                        return head, memoryview(source)[used:]
                    rest = bytes(pending[used:])
                    pending.clear()
                    return head, rest
                if source is not pending:
                    pending += source
                    source = pending
            self.arm(self.listener.back_timeout)
            try:
                if not pending:  # the request was just sent: its answer cannot be here yet
                    wait_readable(connection)
                data = connection.recv(self.ctx.buffer_size * RESPONSE_READ_PIECES)
            except socket.timeout:
                raise Answer(504) from None
            except OSError as error:
                if not pending:  # a reset before any byte: the same as a close
                    raise StaleConnection() from None
                raise Answer(502, f"reading from the backend failed: {error}") from None
            if not data:
                if not pending:
                    raise StaleConnection()
                raise Answer(502, "the backend closed the connection in the middle of a response head")
            if pending:
                pending += data
            else:
                source = data

    def forward_response(self, head, application, backend, connection, sticky_id) -> None:
        http10 = head.version == b"HTTP/1.0"
        rest = b""
        while True:
            response, rest = self.read_response_head(connection, head.method, rest)
            if response.status >= 200 or response.status == 101:
                break
            # 100: sozu answered Continue itself; an HTTP/1.0 client must get no 1xx at all.
            if response.status != 100 and not http10:
                self.client_send(headers.response_head(response, self.request_id, True, False))  # 102, 103
        exchange = self.exchange
        exchange.status = response.status
        exchange.first_byte = monotonic()
        upgrade = response.status == 101 and head.upgrade is not None
        if response.status == 101 and not upgrade:
            raise Answer(502, "the backend switched protocols without being asked to")
        if self.ctx.draining or (http10 and response.body == "chunked"):
            self.keep_alive = False
        keep_alive = self.keep_alive = self.keep_alive and response.body != "close"
        set_cookie = None
        if application["sticky_session"]:
            backend_sticky = backend.sticky_key
            if backend_sticky != sticky_id:
                set_cookie = self.listener.sticky_name + b"=" + backend_sticky.encode() + b"; Path=/"
        head_bytes = rules.edit_response(self.route, headers.response_head(
            response, self.request_id, keep_alive, http10, set_cookie, upgrade))
        self.response_started = True
        if upgrade:
            self.client_send(head_bytes)
            self.tunnel(connection, rest)
            return
        clean = self.copy_response_body(response, connection, head_bytes, rest)
        # An HTTP/1.0 request told the backend to close, whatever its answer says; a request
        # whose body could not all be sent left the connection in an unknown state.
        if clean and response.keep_alive and not (http10 or self.body_unread or connection.private):
            self.ctx.backend_pool.put(backend.address, connection)
        else:
            connection.close()

    def copy_response_body(self, response, connection, head: bytes, rest) -> bool:
        """Send the response head and stream the body (which starts with rest); True when the
        backend connection is left clean: nothing came after the response. The head goes out
        with the body's first bytes: one send for a small response."""
        kind = response.body
        if kind == "none":
            self.client_send(head)
            return not rest
        if kind == "length":
            remaining = response.content_length
            piece = rest[:remaining]
            self.client_send(head, piece)
            remaining -= len(piece)
            clean = len(rest) == len(piece)
            while remaining > 0:
                data = self.backend_recv(connection, remaining)
                if not data:
                    raise Aborted("backend closed in the middle of a response body")
                self.client_send(data)
                remaining -= len(data)
            return clean
        self.client_send(head)
        if kind == "chunked":
            framer = ChunkedFramer(DEFAULT_LIMITS, 502)
            data = rest
            while True:
                if data:
                    try:
                        used = framer.feed(data)
                    except ProtocolError as error:
                        raise Aborted(f"backend sent a bad chunked body: {error.message}") from None
                    self.client_send(data if used == len(data) else data[:used])
                    if framer.done:
                        return used == len(data)
                data = self.backend_recv(connection)
                if not data:
                    raise Aborted("backend closed in the middle of a chunked response body")
        # "close": the body ends when the backend closes; so does the client connection.
        if rest:
            self.client_send(rest)
        while True:
            data = self.backend_recv(connection)
            if not data:
                return False
            self.client_send(data)

    def backend_recv(self, connection, limit: int | None = None):
        """A piece of the response body. After the response head was sent, a failing backend can
        only end the connection."""
        self.arm(self.listener.back_timeout)
        try:
            return self.recv_piece(connection, limit)
        except OSError as error:
            raise Aborted(f"backend failed in the middle of a response body: {error}") from None

    def tunnel(self, connection, rest) -> None:
        """After 101 Switching Protocols: bytes both ways (sozu.relay) until both sides are done,
        or until neither side has moved for front_timeout. rest: what the backend sent after its
        101 head."""
        self.ctx.deadlines.disarm(self)  # the relay supervises its own idleness
        self.give_back_body_buffer()  # a tunnel may last for hours
        self.keep_alive = False
        client, exchange = self.sock, self.exchange
        try:
            if self.buf:
                connection.sendall(bytes(self.buf))
                exchange.bytes_in += len(self.buf)
                self.buf.clear()
            if rest:
                client.sendall(rest)
                exchange.bytes_out += len(rest)
        except OSError as error:
            raise Aborted(f"the tunnel failed at its start: {error}") from None
        timeout = self.listener.front_timeout
        relay = Relay(client, connection, self.ctx.buffer_size, timeout, timeout)
        try:
            reason = relay.run()
        finally:
            exchange.bytes_in += relay.bytes_in
            exchange.bytes_out += relay.bytes_out
            connection.close()
        log.debug("%s: tunnel ended: %s", _describe(self), reason)

    # -- the end of an exchange ------------------------------------------------------------
    def finish_exchange(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.response_started = False  # an error in the next request is answered again
        self.give_back_body_buffer()
        if exchange is None:
            return
        self.ctx.metrics.record(exchange)
        if not access_log.disabled:
            access_lines.http(self.client_ip, exchange, self.request_id)


def wait_readable(sock) -> None:
    """Wait until sock can be read, where nothing can have arrived yet. gevent's recv would try
    first, and pay a failed system call and an exception for it, twice per request. A TLS
    socket may hold decrypted bytes already: its recv waits when it must. (gevent has no public
    way to wait on a socket's own watcher; wait_read() would make a watcher per call.)"""
    read_event = getattr(sock, "_read_event", None)
    if read_event is not None:
        sock._wait(read_event)


def send_all(sock, data, more=b"") -> None:
    """data, then more, in one system call when the socket takes it all, the usual case. (gevent's
    own sendall asks the kernel for SO_SNDBUF on every call and arms a Timeout: that doubles the
    system calls of a small exchange.) Two parts (a head and the start of its body) are gathered
    by sendmsg without a copy; a TLS socket, which has no sendmsg, gets them joined."""
    if not more:
        sent = sock.send(data)
    elif hasattr(sock, "sendmsg"):
        sent = sock.sendmsg((data, more))
    else:
        data, more = data + more, b""
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
        sent = len(data)
    if sent < len(data) + len(more):
        sock.sendall(memoryview(more)[sent - len(data):])


def serve(ctx, listener, sock, client_address) -> None:
    """The connection greenlet: one of the three places where errors are caught."""
    session = HttpSession(ctx, listener, sock, client_address)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # a TLS handshake had its own; from here on, deadlines
        session.run()
    except Answer as answer:
        ctx.deadlines.disarm(session)  # the error answer bounds its own waits
        if not session.response_started:
            _send_error(session, answer.status, answer.body or session.error_answer(answer.status, answer.detail))
        level = (logging.WARNING if answer.status >= 500 else
                 logging.DEBUG if answer.status in ROUTINE else logging.INFO)
        log.log(level, "%s: %d %s", _describe(session), answer.status, answer.detail)
    except ClientGone as gone:
        log.debug("%s: connection ended: %s", _describe(session), gone)
    except Aborted as aborted:
        log.warning("%s: response aborted: %s", _describe(session), aborted)
    except Exception:
        ctx.deadlines.disarm(session)
        log.exception("%s: unexpected error; the connection is closed", _describe(session))
        if not session.response_started:
            _send_error(session, 500, answers.default_answer(500))
    finally:
        ctx.deadlines.disarm(session)  # what follows bounds its own waits
        try:
            session.finish_exchange()
            if session.body_unread:
                _linger(sock)
        except Exception:  # still the edge: a bug in the closing steps must not skip the close
            log.exception("%s: unexpected error while closing the connection", _describe(session))
        sock.close()


def _describe(session) -> str:
    """`client METHOD host/path -> backend`: which request a log line is about."""
    exchange = session.exchange
    if exchange is None or exchange.path == b"-":  # no request head parsed
        return session.client_ip
    return (f"{session.client_ip} {exchange.method.decode('latin-1')} {exchange.host}"
            f"{exchange.path.decode('latin-1')} -> {exchange.backend}")


def _send_error(session, status: int, data: bytes) -> None:
    if session.exchange is None:
        session.exchange = Exchange()
    session.exchange.status = status
    sock = session.sock
    try:
        sock.settimeout(1)
        sock.sendall(data)
        session.exchange.bytes_out += len(data)
    except OSError:
        return  # the client is gone already: the answer was only a courtesy
    session.body_unread = True  # after an error, whatever the client still sends is unread


def _linger(sock) -> None:
    """Half-close, then read and drop what the client still sends, for LINGER_SECONDS at most:
    closing with unread input makes the kernel reset the connection, and the reset can destroy
    the answer before the client has read it (nginx's lingering_close)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return
    except OSError:
        pass  # the client is gone, or too slow to go: it had its answer
