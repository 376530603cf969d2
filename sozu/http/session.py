"""One client connection of an HTTP listener, proxied in one greenlet: a state machine (worker only, gevent).

Theory of operation
-------------------
A session is in one state at a time. `enter()` is the only way from one to the next, and
TRANSITIONS below is the whole list of the moves it allows:

  READING_HEAD -> ROUTING -> CONNECTING -> STREAMING_REQUEST -> STREAMING_RESPONSE -> KEEPALIVE_IDLE
       ^                          ^               |                     |   |               |
       |                          +---------------+---------------------+   +-> TUNNEL      |
       |                            (a pooled connection found stale: once more, fresh)     |
       +------------------------------------------------------------------------------------+
  and from every state, CLOSING.

  reading head        the whole head within request_timeout (counted from the accept for a
                      connection's first request, from its first byte for later ones: slowloris
                      costs a slot no longer), then parsed strictly (sozu.http.parser: a bad
                      request never reaches a backend); 408. Nothing at all: a quiet close.
  routing             (host, path) to an application and its front; the front's own rules
                      (sozu.http.rules: a redirect, a rewrite, header edits) decide what the
                      backend sees. No wait, so no deadline.
  connecting          pick a backend and connect, connect_timeout per attempt: a failed connect
                      marks the backend down and the next one is tried (one dead backend costs
                      no user a failed request while another is up); 503 when none is reached.
  streaming request   the rewritten head, then the body: back_timeout for each write to the
                      backend, front_timeout for each read from the client (408).
  streaming response  the backend's head (back_timeout: 504), rewritten, then its body:
                      back_timeout for each read from the backend, front_timeout for each write
                      to the client. The backend connection goes back to the worker's pool when
                      it can carry another request.
  keep-alive idle     between requests: front_timeout, then a quiet close, as in nginx. A
                      draining worker closes idle connections, but serves the first request of
                      a connection it has accepted (no client retries on a new connection).
  tunnel              after 101 Switching Protocols: bytes both ways (sozu.relay), which
                      supervises its own idleness: no session deadline.
  closing             the error answer and the lingering close bound their own waits
                      (sozu.http.edge).

Deadlines (sozu.http.deadlines): the sockets have no timeout, which spares gevent a timer per
wait (a third of the CPU of a small request). A state arms its deadline before it waits, and
the worker's Deadlines greenlet throws socket.timeout into a session still waiting past it.
`enter()` disarms whatever the state before had armed, so no deadline outlives its state: a
head that arrived late in its request_timeout cannot time out the backend connect that follows
(that would mark a healthy backend down), nor a report to the master.

Bodies are streamed with bounded memory (sozu.http.bodies). Header lines that are only
forwarded are not re-parsed; only hop-by-hop headers are removed, the sticky cookie taken out of
Cookie, and the X-Forwarded-*/Forwarded/Sozu-Id headers added. sozu answers its clients in
HTTP/1.1 whatever the backend's version. An HTTP/1.0 request goes to the backend as HTTP/1.0
with `Connection: close` (that backend connection is not reused); a backend that answers it
chunked anyway has its body decoded, without Transfer-Encoding, and delimited by closing the
client connection (RFC 9112 §6.1: no chunks to a client that does not know them).

Two failures are recovered from where they happen: a pooled backend connection that the backend
closed as it was reused (no byte of a response) is retried once on a fresh one when the request
has no body and may be repeated (`StaleConnection`: the pool checks every connection before
reuse, but a close can race the check); and a backend that stops reading the request body (it
answered 413 or 401 early) still has its answer read and forwarded (`BackendStoppedReading`).
Every other error ends the connection at its edge, sozu.http.edge.serve().

The session gets a SessionContext (sozu.http.context), never the worker itself.
"""
from __future__ import annotations

import logging
import math
import os
from itertools import count
from time import monotonic

import gevent
from gevent import socket

from sozu import proxy_protocol
from sozu.connector import connect
from sozu.http import answers, headers, rules
from sozu.http.bodies import BodyStreams
from sozu.http.exchange import Aborted, Answer, BackendStoppedReading, ClientGone, Exchange, StaleConnection
from sozu.http.parser import ProtocolError, parse_request_head, parse_response_head
from sozu.http.sockio import send_all, wait_readable
from sozu.relay import Relay

log = logging.getLogger("sozu.http")

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

# -- the states, and every move between them ---------------------------------------------------
READING_HEAD = "reading head"
ROUTING = "routing"
CONNECTING = "connecting"
STREAMING_REQUEST = "streaming request"
STREAMING_RESPONSE = "streaming response"
KEEPALIVE_IDLE = "keep-alive idle"
TUNNEL = "tunnel"
CLOSING = "closing"
TRANSITIONS = {
    READING_HEAD: frozenset((ROUTING, CLOSING)),
    ROUTING: frozenset((CONNECTING, CLOSING)),
    CONNECTING: frozenset((STREAMING_REQUEST, CLOSING)),
    # back to CONNECTING: a pooled connection the backend had closed (StaleConnection)
    STREAMING_REQUEST: frozenset((STREAMING_RESPONSE, CONNECTING, CLOSING)),
    STREAMING_RESPONSE: frozenset((KEEPALIVE_IDLE, TUNNEL, CONNECTING, CLOSING)),
    KEEPALIVE_IDLE: frozenset((READING_HEAD, CLOSING)),
    TUNNEL: frozenset((CLOSING,)),
    CLOSING: frozenset(),
}


def _new_request_ids() -> None:
    """Sozu-Id = random per-process prefix + counter: unique across workers and restarts."""
    global _id_prefix, _request_ids
    _id_prefix = os.urandom(6).hex().encode() + b"-"
    _request_ids = count()


_new_request_ids()
os.register_at_fork(after_in_child=_new_request_ids)


class BackendSocket(socket.socket):
    """A backend connection, with the start of a response head that came in several reads."""

    pending: bytearray
    private = False  # carries one client's requests only (PROXY protocol): never pooled
    idle_since: float  # set by the backend pool


class HttpSession(BodyStreams):
    def __init__(self, ctx, listener, sock, client_address):
        self.ctx = ctx  # sozu.http.context.SessionContext
        self.listener = listener
        self.sock = sock
        self.client_address = client_address
        self.client_ip = client_address[0] if client_address else "-"
        self.client_ip_bytes = self.client_ip.encode()
        self.accepted = monotonic()
        self.state = READING_HEAD
        self.buf = bytearray()
        self.response_started = False
        self.keep_alive = True
        self.exchange: Exchange | None = None
        self.request_id = b"-"
        self.body_unread = False  # the client may still be sending: read it before closing
        # The deadline of the current state (sozu.http.deadlines), and when the Deadlines
        # greenlet will look at it next.
        self.greenlet = gevent.getcurrent()
        self.deadline = self.filed_at = math.inf
        self.body_buffer = None  # lent by the worker while a large body is copied
        self.route = None  # the front of the request being proxied (sozu.router.Route)
        self.chunked_checked = 0  # bytes of a chunked body checked before a backend was chosen

    def enter(self, state: str) -> None:
        """The one way to a new state: the deadline of the state before ends here."""
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"no move from {self.state} to {state}")  # a bug: answered 500
        self.state = state
        self.deadline = math.inf

    def arm(self, seconds: float) -> None:
        """The current state's next wait ends within `seconds` (Deadlines.arm, inlined: it runs
        several times per request)."""
        self.deadline = deadline = monotonic() + seconds
        if deadline < self.filed_at:
            self.ctx.deadlines.file(self)

    # -- reading head, keep-alive idle -------------------------------------------------------
    def run(self) -> None:
        """The states of one request after another, until the connection ends (an exception
        ends it at the edge)."""
        deadline = self.accepted + self.listener.request_timeout
        while True:
            parsed = self.read_request_head(deadline)
            if parsed is None:
                return
            head, used = parsed
            del self.buf[:used]
            self.exchange = Exchange(head.method, head.host, head.path)
            self.request_id = b"-"  # until a backend is asked (or an error answer needs one)
            self.exchange.bytes_in = used
            self.enter(ROUTING)
            self.proxy(head)
            self.finish_exchange()
            # Between requests, a draining worker ends the connection (clients retry a request
            # on a reused connection, never on one they have just opened).
            if not self.keep_alive or self.ctx.draining:
                return
            self.enter(KEEPALIVE_IDLE)
            if not self.buf and not self.wait_idle():
                return
            self.enter(READING_HEAD)
            deadline = monotonic() + self.listener.request_timeout

    def read_request_head(self, deadline: float):
        """READING_HEAD: (head, bytes used) by the deadline, or None when the connection ended
        quietly before a byte of a request."""
        buf = self.buf
        self.deadline = deadline  # Deadlines.arm, at a time given
        if deadline < self.filed_at:
            self.ctx.deadlines.file(self)
        new, parsed_size = buf, -REPARSE_GROWTH
        while True:
            if new and (b"\n" in new or len(buf) - parsed_size >= REPARSE_GROWTH):
                parsed_size = len(buf)
                try:
                    parsed = parse_request_head(buf, self.ctx.limits)
                except ProtocolError as error:
                    raise Answer(error.status_hint, error.message) from None
                if parsed is not None:
                    return parsed
            try:
                new = self.sock.recv(self.ctx.buffer_size)
            except socket.timeout:
                if not buf:  # a connection that never sent a byte: closed quietly
                    return None
                raise Answer(408) from None
            except OSError as error:
                if not buf:
                    return None
                raise ClientGone(str(error)) from None
            if not new:
                if not buf:
                    return None
                raise ClientGone("closed in the middle of a request head")
            buf += new

    def wait_idle(self) -> bool:
        """KEEPALIVE_IDLE: True when the next request's first bytes came within front_timeout;
        False when the connection ends (quietly, as in nginx: no 408 between requests). The
        worker may close it meanwhile to drain (ctx.idle_sockets)."""
        sock, idle = self.sock, self.ctx.idle_sockets
        idle.add(sock)
        try:
            self.arm(self.listener.front_timeout)
            wait_readable(sock)  # the answer was just sent: the next request cannot be here yet
            data = sock.recv(self.ctx.buffer_size)
        except OSError:  # the timeout included
            return False
        finally:
            idle.discard(sock)
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

    # -- routing ------------------------------------------------------------------------------
    def proxy(self, head) -> None:
        """ROUTING, then the states of one exchange with a backend."""
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
        # (Pure code on the parsed head: this is where a rule that needs no wait belongs.)
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
                ctx.backends.release(app_id, backend)

    # -- connecting ---------------------------------------------------------------------------
    def connect_backend(self, app_id, application, sticky_id, fresh: bool):
        """CONNECTING: (backend, connection, reused) for the application (sozu.connector): an
        idle pooled connection unless `fresh`, else a new one; 503 when none is reached."""
        self.enter(CONNECTING)
        ctx = self.ctx
        reuse = None if fresh else (lambda backend: ctx.backend_pool.get(backend.address))
        backend, connection, reused = ctx.backends.connect(app_id, self.open_backend, sticky_id, reuse)
        if backend is None:
            raise Answer(503, "no backend could be reached")
        self.exchange.backend = backend.address
        self.exchange.connected = monotonic()
        if not reused and application["proxy_protocol"] in SENDS_PROXY:
            connection.private = True
            self.send_proxy_header(connection, application.get("send_proxy_version", 2))
        return backend, connection, reused

    def open_backend(self, address: str):
        """One connect attempt, bounded by connect_timeout; disarmed after, so that what follows
        a failure (marking the backend down, a report to the master) is never cut short."""
        self.arm(self.listener.connect_timeout)
        try:
            connection = connect(address, None, BackendSocket)
        finally:
            self.deadline = math.inf
        connection.pending = bytearray()
        return connection

    def send_proxy_header(self, connection, version: int) -> None:
        destination = self.sock.getsockname()[:2]
        source = self.client_address[:2] if self.client_address else None
        self.arm(self.listener.connect_timeout)
        try:
            send_all(connection, proxy_protocol.encode(version, source, destination))
        except OSError as error:
            raise Answer(502, f"sending the PROXY header failed: {error}") from None

    def describe(self) -> str:
        """`client METHOD host/path -> backend`: which request a log line is about."""
        exchange = self.exchange
        if exchange is None or exchange.path == b"-":  # no request head parsed
            return self.client_ip
        return (f"{self.client_ip} {exchange.method.decode('latin-1')} {exchange.host}"
                f"{exchange.path.decode('latin-1')} -> {exchange.backend}")

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

    # -- streaming request --------------------------------------------------------------------
    def forward_request(self, head, connection, body: bool, sticky: bool, framer) -> None:
        self.enter(STREAMING_REQUEST)
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
            log.debug("%s: %s; reading its answer", self.describe(), stopped)
            self.keep_alive = False
            self.body_unread = True

    def backend_send(self, connection, data) -> None:
        self.arm(self.listener.back_timeout)
        try:
            send_all(connection, data)
        except socket.timeout:
            raise Answer(504, "the backend stopped reading the request body") from None
        except OSError as error:
            raise BackendStoppedReading(f"sending the request body failed: {error}") from None

    # -- streaming response -------------------------------------------------------------------
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
                    parsed = parse_response_head(source, method, self.ctx.limits)
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
        self.enter(STREAMING_RESPONSE)
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
        upgrade = response.status == 101 and headers.forwarded_upgrade(head) is not None
        if response.status == 101 and not upgrade:
            raise Answer(502, "the backend switched protocols without being asked to")
        dechunked = http10 and response.body == "chunked"
        if self.ctx.draining or dechunked:
            self.keep_alive = False
        keep_alive = self.keep_alive = self.keep_alive and response.body != "close"
        set_cookie = None
        if application["sticky_session"]:
            backend_sticky = backend.sticky_key
            if backend_sticky != sticky_id:
                set_cookie = self.listener.sticky_name + b"=" + backend_sticky.encode() + b"; Path=/"
        head_bytes = rules.edit_response(self.route, headers.response_head(
            response, self.request_id, keep_alive, http10, set_cookie, upgrade, dechunked))
        self.response_started = True
        if upgrade:
            self.client_send(head_bytes)
            self.tunnel(connection, rest)
            return
        clean = self.copy_response_body(response, connection, head_bytes, rest, dechunked)
        # An HTTP/1.0 request told the backend to close, whatever its answer says; a request
        # whose body could not all be sent left the connection in an unknown state.
        if clean and response.keep_alive and not (http10 or self.body_unread or connection.private):
            self.ctx.backend_pool.put(backend.address, connection)
        else:
            connection.close()

    def backend_recv(self, connection, limit: int | None = None):
        """A piece of the response body. After the response head was sent, a failing backend can
        only end the connection."""
        self.arm(self.listener.back_timeout)
        try:
            return self.recv_piece(connection, limit)
        except OSError as error:
            raise Aborted(f"backend failed in the middle of a response body: {error}") from None

    def tunnel(self, connection, rest) -> None:
        """TUNNEL, after 101 Switching Protocols: bytes both ways (sozu.relay) until both sides are done,
        or until neither side has moved for front_timeout. rest: what the backend sent after its
        101 head."""
        self.enter(TUNNEL)  # the relay supervises its own idleness
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
        log.debug("%s: tunnel ended: %s", self.describe(), reason)

    # -- the end of an exchange ------------------------------------------------------------
    def finish_exchange(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.response_started = False  # an error in the next request is answered again
        self.give_back_body_buffer()
        if exchange is None:
            return
        self.ctx.metrics.record(exchange)
        access_log = self.ctx.access_log
        if not access_log.logger.disabled:
            access_log.http(self.client_ip, exchange, self.request_id)
