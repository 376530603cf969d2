"""One client connection of an HTTP listener, proxied in one greenlet (worker only, gevent).

Theory of operation
-------------------
A session loops over the requests of a keep-alive connection:

  wait for the first byte (front_timeout: an idle keep-alive connection)
  -> read the whole head (request_timeout from its first byte: slowloris costs a slot no longer)
  -> parse it strictly (sozu.http.parser; a bad request never reaches a backend)
  -> route (host, path) to an application, pick a backend, connect (connect_timeout; a failed
     connect marks the backend down and moves on to the next: one dead backend costs no user a
     failed request while another is up)
  -> forward the rewritten head, stream the body in buffer_size pieces
  -> read the backend's head (back_timeout), forward it rewritten, stream its body
  -> give the backend connection back to the worker's pool when it can carry another request.

Bodies are never held whole: Content-Length bodies are copied by count, chunked bodies are
forwarded as they are while a ChunkedFramer checks their framing, read-until-close bodies end the
client connection. Header lines that are only forwarded are not re-parsed; only hop-by-hop
headers are removed and the X-Forwarded-*/Forwarded/Sozu-Id headers added.

Errors end the connection at one place, `serve()`: an `Answer` exception carries the status to
answer (with `Connection: close`) if nothing of a response has been sent yet; a client that went
away is closed quietly; anything else is a bug, logged once with its traceback and answered 500.
"""
from __future__ import annotations

import errno
import logging
import time
from itertools import count

import gevent
from gevent import socket

from sozu.http import answers
from sozu.http.parser import (DEFAULT_LIMITS, ChunkedFramer, ProtocolError, parse_request_head,
                              parse_response_head)
from sozu.listeners import sockaddr

log = logging.getLogger("sozu.http")
access_log = logging.getLogger("sozu.access")

# Removed from both directions (RFC 9110 §7.6.1). Transfer-Encoding is hop-by-hop too, but sozu
# forwards chunked bodies as they are, so the header that describes them stays.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"te", b"trailer", b"upgrade",
                        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization"))
# Headers sozu sets itself; a client's copy would be a spoof.
OWN_HEADERS = frozenset((b"x-forwarded-proto", b"x-forwarded-port", b"sozu-id", b"expect"))
# Never dropped because a Connection header names them: they frame the message.
FRAMING = frozenset((b"content-length", b"transfer-encoding", b"host"))
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_request_ids = count()


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
    """A pooled backend connection turned out closed before any byte of the response."""


class BackendSocket(socket.socket):
    """A backend connection, with the bytes read from it that no response has used yet."""

    pending: bytearray


class Exchange:
    """What the access log and metrics say about one request."""

    __slots__ = ("start", "method", "host", "path", "status", "backend", "bytes_in", "bytes_out", "app_id")

    def __init__(self, method=b"-", host="-", path=b"-"):
        self.start = time.monotonic()
        self.method, self.host, self.path = method, host, path
        self.status = 0
        self.backend = "-"
        self.bytes_in = self.bytes_out = 0
        self.app_id = "-"

    def duration_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000


class HttpSession:
    def __init__(self, ctx, listener, sock, client_address):
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.client_ip = client_address[0] if client_address else "-"
        self.buf = bytearray()
        self.response_started = False
        self.keep_alive = True
        self.exchange: Exchange | None = None

    # -- the request loop -------------------------------------------------------------------
    def run(self) -> None:
        while self.keep_alive and not self.ctx.draining:
            parsed = self.read_request_head()
            if parsed is None:
                return
            head, used = parsed
            del self.buf[:used]
            self.exchange = Exchange(head.method, head.host, head.path)
            self.response_started = False
            self.proxy(head)
            self.finish_exchange()

    def read_request_head(self):
        listener = self.listener
        if not self.buf:
            if not self.wait_first_bytes():
                return None
        deadline = time.monotonic() + listener.request_timeout
        while True:
            try:
                parsed = parse_request_head(self.buf, DEFAULT_LIMITS)
            except ProtocolError as error:
                self.exchange = Exchange()
                raise Answer(error.status_hint, error.message) from None
            if parsed is not None:
                return parsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.exchange = Exchange()
                raise Answer(408)
            data = self.client_recv(remaining, timeout_answer=408)
            if not data:
                raise ClientGone("closed in the middle of a request head")
            self.buf += data

    def wait_first_bytes(self) -> bool:
        """An idle keep-alive connection: the worker may close it to drain."""
        idle = self.ctx.idle_sockets
        idle.add(self.sock)
        try:
            self.sock.settimeout(self.listener.front_timeout)
            data = self.sock.recv(self.ctx.buffer_size)
        except (socket.timeout, OSError):
            return False
        finally:
            idle.discard(self.sock)
        if not data:
            return False
        self.buf += data
        return True

    def client_recv(self, timeout: float, timeout_answer: int | None = None) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(self.ctx.buffer_size)
        except socket.timeout:
            if timeout_answer:
                raise Answer(timeout_answer) from None
            raise ClientGone("client timed out") from None
        except OSError as error:
            raise ClientGone(str(error)) from None

    def client_send(self, data) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise ClientGone(str(error)) from None
        self.exchange.bytes_out += len(data)

    # -- one exchange -----------------------------------------------------------------------
    def proxy(self, head) -> None:
        ctx, listener, exchange = self.ctx, self.listener, self.exchange
        self.keep_alive = head.keep_alive
        app_id = ctx.router.route_http(listener.address, head.host, head.path, listener.https)
        if app_id is None:
            raise Answer(404, body=listener.answer_404)
        exchange.app_id = app_id
        application = ctx.applications.get(app_id)
        if application is None:  # removed between routing tables: same as no route
            raise Answer(404, body=listener.answer_404)
        if application["https_redirect"] and not listener.https:
            location = b"https://" + head.host.encode("idna") + head.target
            raise Answer(301, body=answers.redirect_answer(location))
        body = head.content_length is not None and head.content_length > 0 or head.chunked
        sticky_id = self.sticky_cookie(head) if application["sticky_session"] else None
        retries_left = 1
        while True:
            backend, connection, reused = self.connect_backend(app_id, application, sticky_id)
            try:
                self.forward_request(head, backend, connection, body)
                self.forward_response(head, application, backend, connection, sticky_id)
                return
            except StaleConnection:
                # The backend closed an idle pooled connection as we reused it. A request whose
                # body was not consumed and that may be repeated is retried on a fresh one.
                connection.close()
                if not (reused and not body and head.method in IDEMPOTENT and retries_left):
                    raise Answer(502, "the backend closed the connection") from None
                retries_left -= 1
            finally:
                ctx.balancer_release(app_id, backend)

    def connect_backend(self, app_id, application, sticky_id):
        """A connection to a backend of the application, trying each usable one once."""
        ctx, listener = self.ctx, self.listener
        backends = ctx.balancer.backends(app_id)
        tried = set()
        while backends is not None:
            now = time.monotonic()
            backend = backends.pick(now, tried, sticky_id)
            if backend is None:
                break
            tried.add(backend)
            backends.acquire(backend)
            pooled = ctx.backend_pool.get(backend.address)
            if pooled is not None:
                self.exchange.backend = backend.address
                return backend, pooled, True
            try:
                connection = self.open_backend(backend.address, listener.connect_timeout)
            except OSError as error:
                backends.release(backend)
                ctx.metrics.incr("backend_connect_errors")
                if backends.mark_failure(backend, now):
                    log.warning("backend %s (%s) of %s is down: %s", backend.backend_id,
                                backend.address, app_id, error)
                    ctx.event("BACKEND_DOWN", app_id, backend)
                continue
            if backends.mark_success(backend):
                log.info("backend %s (%s) of %s is up again", backend.backend_id, backend.address, app_id)
                ctx.event("BACKEND_UP", app_id, backend)
            self.exchange.backend = backend.address
            return backend, connection, False
        ctx.event("NO_AVAILABLE_BACKENDS", app_id, None)
        raise Answer(503, body=self.answer_503(application))

    def answer_503(self, application) -> bytes | None:
        if application.get("answer_503"):
            return answers.custom_answer(application["answer_503"])
        return self.listener.answer_503

    @staticmethod
    def open_backend(address: str, timeout: float):
        family, addr = sockaddr(address)
        connection = BackendSocket(family, socket.SOCK_STREAM)
        connection.settimeout(timeout)
        try:
            connection.connect(addr)
        except BaseException:
            connection.close()
            raise
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.pending = bytearray()
        return connection

    def sticky_cookie(self, head):
        prefix = self.listener.sticky_name + b"="
        for name, value in head.headers:
            if name.lower() == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        return part[len(prefix):].decode("latin-1")
        return None

    # -- request ----------------------------------------------------------------------------
    def request_head_bytes(self, head, request_id: bytes) -> bytes:
        listener = self.listener
        drop = HOP_BY_HOP.union(head.connection_tokens - FRAMING) if head.connection_tokens else HOP_BY_HOP
        client = self.client_ip.encode()
        lines = [head.method, b" ", head.target, b" ", head.version, b"\r\n"]
        forwarded_for = None
        forwarded = None
        for name, value in head.headers:
            lname = name.lower()
            if lname in drop or lname in OWN_HEADERS:
                continue
            if lname == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                continue
            if lname == b"forwarded":
                forwarded = value if forwarded is None else forwarded + b", " + value
                continue
            lines += (name, b": ", value, b"\r\n")
        for_value = b"[" + client + b"]" if b":" in client else client
        element = (b"proto=" + listener.scheme + b";for=" + (b'"' + for_value + b'"' if b":" in client else client) +
                   b";by=" + listener.by)
        lines += (b"X-Forwarded-For: ", forwarded_for + b", " + client if forwarded_for else client,
                  b"\r\nForwarded: ", forwarded + b", " + element if forwarded else element,
                  b"\r\nX-Forwarded-Proto: ", listener.scheme,
                  b"\r\nX-Forwarded-Port: ", listener.port,
                  b"\r\nSozu-Id: ", request_id, b"\r\n")
        if head.upgrade is not None:
            lines.append(b"Connection: Upgrade\r\nUpgrade: " + head.upgrade + b"\r\n")
        elif head.version == b"HTTP/1.0":
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def forward_request(self, head, backend, connection, body: bool) -> None:
        request_id = b"%x-%x" % (self.ctx.worker_id, next(_request_ids))
        self.request_id = request_id
        data = self.request_head_bytes(head, request_id)
        connection.settimeout(self.listener.back_timeout)
        try:
            connection.sendall(data)
        except OSError:
            raise StaleConnection() from None
        if not body:
            return
        if head.expect_continue and head.version == b"HTTP/1.1":
            # Like nginx: sozu says "continue" itself once a backend is ready, so a backend
            # that ignores Expect cannot leave the client waiting.
            self.client_send(CONTINUE)
        if head.chunked:
            self.copy_chunked_request(connection)
        else:
            self.copy_request_length(connection, head.content_length)

    def copy_request_length(self, connection, remaining: int) -> None:
        buf = self.buf
        if buf:
            piece = bytes(buf[:remaining])
            del buf[:len(piece)]
            self.backend_send(connection, piece)
            remaining -= len(piece)
            self.exchange.bytes_in += len(piece)
        while remaining > 0:
            data = self.client_recv(self.listener.front_timeout)
            if not data:
                raise ClientGone("closed in the middle of a request body")
            if len(data) > remaining:  # the start of a pipelined request
                self.buf += data[remaining:]
                data = data[:remaining]
            self.backend_send(connection, data)
            remaining -= len(data)
            self.exchange.bytes_in += len(data)

    def copy_chunked_request(self, connection) -> None:
        framer = ChunkedFramer(DEFAULT_LIMITS, 400)
        data = bytes(self.buf)
        self.buf.clear()
        while True:
            if data:
                try:
                    used = framer.feed(data)
                except ProtocolError as error:
                    raise Answer(error.status_hint, error.message) from None
                self.backend_send(connection, data[:used])
                self.exchange.bytes_in += used
                if framer.done:
                    self.buf += data[used:]
                    return
            data = self.client_recv(self.listener.front_timeout)
            if not data:
                raise ClientGone("closed in the middle of a chunked request body")

    def backend_send(self, connection, data) -> None:
        try:
            connection.sendall(data)
        except OSError as error:
            raise Answer(502, f"sending to the backend failed: {error}") from None

    # -- response ---------------------------------------------------------------------------
    def read_response_head(self, connection, method: bytes):
        pending = connection.pending
        connection.settimeout(self.listener.back_timeout)
        while True:
            try:
                parsed = parse_response_head(pending, method, DEFAULT_LIMITS)
            except ProtocolError as error:
                raise Answer(502, error.message) from None
            if parsed is not None:
                head, used = parsed
                del pending[:used]
                return head
            try:
                data = connection.recv(self.ctx.buffer_size)
            except socket.timeout:
                raise Answer(504) from None
            except OSError as error:
                if not pending and error.errno in (errno.ECONNRESET, errno.EPIPE):
                    raise StaleConnection() from None
                raise Answer(502, f"reading from the backend failed: {error}") from None
            if not data:
                if not pending:
                    raise StaleConnection()
                raise Answer(502, "the backend closed the connection in the middle of a response head")
            pending += data

    def response_head_bytes(self, response, keep_alive: bool, set_cookie: bytes | None,
                            upgrade: bool) -> bytes:
        drop = HOP_BY_HOP.union(response.connection_tokens - FRAMING) if response.connection_tokens else HOP_BY_HOP
        if upgrade:
            drop = drop - {b"upgrade"}
        lines = [response.version, b" ", str(response.status).encode(), b" ", response.reason, b"\r\n"]
        for name, value in response.headers:
            lname = name.lower()
            if lname in drop or lname == b"sozu-id":
                continue
            lines += (name, b": ", value, b"\r\n")
        lines += (b"Sozu-Id: ", self.request_id, b"\r\n")
        if set_cookie:
            lines += (b"Set-Cookie: ", set_cookie, b"\r\n")
        if upgrade:
            lines.append(b"Connection: Upgrade\r\n")
        elif not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif self.http10:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def forward_response(self, head, application, backend, connection, sticky_id) -> None:
        self.http10 = head.version == b"HTTP/1.0"
        while True:
            response = self.read_response_head(connection, head.method)
            if response.status >= 200 or response.status == 101:
                break
            if response.status == 100:
                continue  # sozu already answered 100 Continue itself
            self.client_send(self.response_head_bytes(response, True, None, False))  # 102, 103
        exchange = self.exchange
        exchange.status = response.status
        upgrade = response.status == 101 and head.upgrade is not None
        if response.status == 101 and not upgrade:
            raise Answer(502, "the backend switched protocols without being asked to")
        if self.ctx.draining or (self.http10 and response.body == "chunked"):
            self.keep_alive = False
        keep_alive = self.keep_alive and response.body != "close"
        self.keep_alive = keep_alive
        set_cookie = None
        if application["sticky_session"]:
            backend_sticky = backend.sticky_key
            if backend_sticky != sticky_id:
                set_cookie = self.listener.sticky_name + b"=" + backend_sticky.encode() + b"; Path=/"
        head_bytes = self.response_head_bytes(response, keep_alive, set_cookie, upgrade)
        self.response_started = True
        self.client_send(head_bytes)
        if upgrade:
            self.tunnel(connection)
            return
        reusable = response.keep_alive and self.copy_response_body(response, connection)
        if reusable and not connection.pending:
            self.ctx.backend_pool.put(backend.address, connection)
        else:
            connection.close()

    def copy_response_body(self, response, connection) -> bool:
        """Stream the response body; True when the backend connection is left clean."""
        kind = response.body
        pending = connection.pending
        if kind == "none":
            return True
        if kind == "length":
            remaining = response.content_length
            if pending:
                piece = bytes(pending[:remaining])
                del pending[:len(piece)]
                self.client_send(piece)
                remaining -= len(piece)
            while remaining > 0:
                data = self.backend_recv(connection, min(self.ctx.buffer_size, remaining))
                if not data:
                    raise Aborted("backend closed in the middle of a response body")
                self.client_send(data)
                remaining -= len(data)
            return True
        if kind == "chunked":
            framer = ChunkedFramer(DEFAULT_LIMITS, 502)
            data = bytes(pending)
            pending.clear()
            while True:
                if data:
                    try:
                        used = framer.feed(data)
                    except ProtocolError as error:
                        raise Aborted(f"backend sent a bad chunked body: {error.message}") from None
                    self.client_send(data[:used] if used < len(data) else data)
                    if framer.done:
                        return used == len(data)
                data = self.backend_recv(connection, self.ctx.buffer_size)
                if not data:
                    raise Aborted("backend closed in the middle of a chunked response body")
        # "close": the body ends when the backend closes; so does the client connection.
        if pending:
            self.client_send(bytes(pending))
            pending.clear()
        while True:
            data = self.backend_recv(connection, self.ctx.buffer_size)
            if not data:
                return False
            self.client_send(data)

    def backend_recv(self, connection, size: int) -> bytes:
        """After the response head was sent, a failing backend can only end the connection."""
        try:
            return connection.recv(size)
        except OSError as error:
            raise Aborted(f"backend failed in the middle of a response body: {error}") from None

    def tunnel(self, connection) -> None:
        """After 101 Switching Protocols: bytes both ways until both sides are done."""
        self.keep_alive = False
        client, timeout = self.sock, self.listener.front_timeout
        if self.buf:
            connection.sendall(bytes(self.buf))
            self.buf.clear()
        if connection.pending:
            client.sendall(bytes(connection.pending))
            connection.pending.clear()
        upstream = gevent.spawn(_pump, client, connection, timeout, self.ctx.buffer_size)
        try:
            _pump(connection, client, timeout, self.ctx.buffer_size)
            upstream.join(timeout)
        finally:
            upstream.kill()
            connection.close()

    # -- the end of an exchange ------------------------------------------------------------
    def finish_exchange(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        self.ctx.metrics.record(exchange)
        if not access_log.disabled:
            duration = exchange.duration_ms()
            access_log.info("%s %s %s %d %s %s %s in=%d out=%d %.1fms",
                            self.client_ip, exchange.app_id, exchange.backend, exchange.status,
                            exchange.method.decode("latin-1"), exchange.host,
                            exchange.path.decode("latin-1"), exchange.bytes_in, exchange.bytes_out,
                            duration)


def _pump(source, destination, timeout: float, size: int) -> None:
    source.settimeout(timeout)
    try:
        while True:
            data = source.recv(size)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass  # either side going away ends the tunnel; nothing to answer at this point
    try:
        destination.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already closed


def serve(ctx, listener, sock, client_address) -> None:
    """The connection greenlet: one of the three places where errors are caught."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = HttpSession(ctx, listener, sock, client_address)
    try:
        session.run()
    except Answer as answer:
        if not session.response_started:
            _send_error(session, answer.status, answer.body or answers.default_answer(answer.status, answer.detail))
        if answer.status >= 500:
            log.warning("%s: %d %s", session.client_ip, answer.status, answer.detail)
        else:
            log.debug("%s: %d %s", session.client_ip, answer.status, answer.detail)
    except ClientGone as gone:
        log.debug("%s: connection ended: %s", session.client_ip, gone)
    except Aborted as aborted:
        log.warning("%s: response aborted: %s", session.client_ip, aborted)
    except Exception:
        log.exception("%s: unexpected error; the connection is closed", session.client_ip)
        if not session.response_started:
            _send_error(session, 500, answers.default_answer(500))
    finally:
        session.finish_exchange()
        sock.close()


def _send_error(session, status: int, data: bytes) -> None:
    if session.exchange is None:
        session.exchange = Exchange()
    session.exchange.status = status
    try:
        session.sock.settimeout(1)
        session.sock.sendall(data)
        session.exchange.bytes_out += len(data)
    except OSError:
        pass  # the client is gone already; the answer was only a courtesy
