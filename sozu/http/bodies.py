"""How an HTTP session streams bodies, with bounded memory (worker only, gevent; mixed into
sozu.http.session.HttpSession, whose waits and deadlines it uses).

Bodies are never held whole: Content-Length bodies are copied by count, chunked bodies are
forwarded as they are (decoded for an HTTP/1.0 client, which knows no chunks) while a
ChunkedFramer checks their framing (what arrived with the head is checked before a backend is
chosen, so a smuggling attempt sent in one piece reaches none), read-until-close bodies end the
client connection. A body larger than one buffer_size piece
borrows a buffer of 16 pieces from the worker (sozu.http.buffers) for the rest of its exchange.
"""
from __future__ import annotations

from sozu.http.exchange import Aborted, Answer
from sozu.http.parser import ChunkedFramer, ProtocolError


class BodyStreams:
    """The body steps of a session: the session provides buf, exchange, ctx, body_buffer,
    chunked_checked and the waits client_recv_body, client_send, backend_send, backend_recv."""

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
        framer = ChunkedFramer(self.ctx.limits, 400)
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

    def copy_response_body(self, response, connection, head: bytes, rest, dechunked: bool) -> bool:
        """Send the response head and stream the body (which starts with rest); True when the
        backend connection is left clean: nothing came after the response. The head goes out
        with the body's first bytes: one send for a small response. dechunked: a chunked body
        goes out as its chunk data only."""
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
            framer = ChunkedFramer(self.ctx.limits, 502)
            spans = [] if dechunked else None
            data = rest
            while True:
                if data:
                    try:
                        used = framer.feed(data, spans)
                    except ProtocolError as error:
                        raise Aborted(f"backend sent a bad chunked body: {error.message}") from None
                    if spans is None:
                        self.client_send(data if used == len(data) else data[:used])
                    elif spans:
                        self.client_send(b"".join(data[start:end] for start, end in spans))
                        spans.clear()
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
