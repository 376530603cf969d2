"""TLS termination with pyOpenSSL: certificate checks (master) and handshakes (worker).

Theory of operation
-------------------
Master side: `check_order(order)` refuses an ADD_/REPLACE_CERTIFICATE whose PEM does not parse,
whose key does not match its certificate, or whose certificate has expired, and an https
listener whose cipher_list OpenSSL cannot use, with a CertificateError naming the problem,
before the order touches any state. It imports neither gevent nor sockets.

Worker side: `TlsContexts.update(state)` runs after every order. Per https listener it keeps
one *session context* (the listener's TLS settings, the session cache, the SNI callback) that
lives as long as the listener's configuration, and one context per certificate, built once
when the certificate appears (never per connection). The SNI callback moves each handshake to
the context of its certificate: the exact server name, then the `*.parent` wildcard one label
up, else the listener's default (the first certificate added; a replacement takes the place of
the one it replaces). Among certificates claiming the same name, the one valid the longest
wins, so `certificate add` of a renewal serves it at once. A replaced certificate's context
stays alive as long as the connections that use it.

Connections run over memory BIOs: OpenSSL never touches the socket, the gevent socket does all
the I/O (so a handshake or a read waits cooperatively, bounded by the socket's timeout), and
TLSSocket offers the socket methods the HTTP session uses (recv, sendall, settimeout,
setsockopt, shutdown, close), so the session runs unchanged over TLS. The handshake must end
within the listener's request_timeout from the accept: a client that opens a connection and
sends nothing holds its slot no longer.

Defaults: TLS 1.2 and 1.3 only; TLS 1.2 ciphers with forward secrecy and AEAD only (ECDHE with
AES-GCM or ChaCha20-Poly1305); no compression, no renegotiation; ALPN `h2` then `http/1.1`
(the listener's `alpn` list, in the server's order of preference: a client that offers none of
them, or no ALPN at all, speaks HTTP/1.1).

Sessions are resumed from stateless tickets, sealed with a key of the listener's session
context, which is replaced by a new one (a new random key) every TICKET_KEY_LIFETIME: a ticket
key that leaked would open the TLS 1.2 sessions of that hour only (TLS 1.3 resumes with a fresh
ECDHE, psk_dhe_ke). OpenSSL's server-side session cache is off: it keeps about 2.3 KiB per new
session for SESSION_TIMEOUT, up to 20,480 sessions, so a flood of new TLS clients grew a worker
by up to 47 MiB (6,000 handshakes: +14 MiB with the cache, +1 MiB with tickets), and pyOpenSSL
can neither bound nor flush it. Tickets are per worker, as that cache was: a client that
reconnects to another worker does a full handshake.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import time

from OpenSSL import SSL

from sozu.certificates import (CertificateError, certificate_names, check_certificate, load_certificates,
                               load_key)
from sozu.http.sockio import StreamSocketCalls
from sozu.vocabulary import ALPN_PROTOCOLS, TLS_VERSIONS

log = logging.getLogger("sozu.tls")

_PROTOCOL_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
# Mozilla "intermediate" for TLS 1.2 without the DHE suites: ECDHE (forward secrecy) + AEAD only.
DEFAULT_CIPHER_LIST = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
SESSION_TIMEOUT = 300  # s a ticket is valid, like nginx's ssl_session_timeout
TICKET_KEY_LIFETIME = 3600  # s a listener's ticket key seals new tickets (see the docstring)
RECORD_SIZE = 16384  # plaintext bytes per TLS record: the unit of sendall
# OP_IGNORE_UNEXPECTED_EOF: a client that closes without close_notify (most do) is an end of
# stream, not a fatal error. HTTP framing, not TLS, tells a truncated request. No OP_NO_TICKET:
# tickets are how sessions resume (see the docstring).
_OPTIONS = (SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_SINGLE_ECDH_USE | SSL.OP_IGNORE_UNEXPECTED_EOF)


def check_order(order) -> None:
    """Refuse, before any state changes, a certificate or TLS setting no worker could serve."""
    if order.type == "ADD_CERTIFICATE":
        certificate = order.data["certificate"]
    elif order.type == "REPLACE_CERTIFICATE":
        certificate = order.data["new_certificate"]
    elif order.type == "ADD_HTTPS_LISTENER":
        _new_context(order.data)  # raises CertificateError for an unusable cipher_list
        return
    else:
        return
    check_certificate(certificate["certificate"], certificate["key"],
                      certificate.get("certificate_chain", ()))


# --- contexts (worker) ----------------------------------------------------------------------------

def _alpn_selector(protocols):
    """The ALPN callback: the first of the listener's protocols that the client offers."""
    preferred = [protocol.encode("ascii") for protocol in protocols]

    def select(connection, offered: list[bytes]):
        for protocol in preferred:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def _new_context(config: dict, session_id: bytes = b"sozu") -> SSL.Context:
    """A server context with the listener's TLS settings; CertificateError if they are unusable."""
    versions = [_PROTOCOL_VERSIONS[v] for v in (config.get("versions") or TLS_VERSIONS)
                if v in _PROTOCOL_VERSIONS]
    if not versions:
        raise CertificateError(f"versions: none of {config.get('versions')} is TLSv1.2 or TLSv1.3")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(min(versions))
    context.set_max_proto_version(max(versions))
    context.set_options(_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle keep-alive connection holds no buffers
    cipher_list = config.get("cipher_list") or DEFAULT_CIPHER_LIST
    try:
        context.set_cipher_list(cipher_list.encode("ascii", "replace"))
    except SSL.Error:
        raise CertificateError(f"cipher_list: OpenSSL matches no cipher in {cipher_list!r}") from None
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    context.set_alpn_select_callback(_alpn_selector(config.get("alpn") or ALPN_PROTOCOLS))
    context.set_session_id(session_id)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_timeout(SESSION_TIMEOUT)
    return context


class _Served:
    """One certificate of a listener, with its context."""

    __slots__ = ("fingerprint", "context", "names", "not_after")

    def __init__(self, fingerprint: str, context: SSL.Context, names, not_after):
        self.fingerprint = fingerprint
        self.context = context
        self.names = names
        self.not_after = not_after


class ListenerContexts:
    """The TLS side of one https listener: its session context, certificates and SNI tables."""

    def __init__(self, address: str, config: dict):
        self.address = address
        self.config = config
        # One session id context for all of the listener's contexts: a session stays resumable
        # whichever certificate the SNI callback picked.
        self.session_id = hashlib.sha256(address.encode()).digest()[:16]
        self._new_session_context()
        self.served: dict[str, _Served] = {}
        self.unusable: set[str] = set()  # refused by OpenSSL: logged once, not retried
        self.order: list[str] = []  # fingerprints, the default first
        self.exact: dict[str, SSL.Context] = {}
        self.wildcard: dict[str, SSL.Context] = {}
        self.default: SSL.Context | None = None

    def update(self, certificates: dict[str, dict]) -> None:
        """Follow the state's certificates of this listener (fingerprint -> entry)."""
        self.unusable &= certificates.keys()
        if certificates.keys() == self.served.keys() | self.unusable:
            return
        removed = [fp for fp in self.order if fp not in certificates]
        added = [fp for fp in certificates if fp not in self.served and fp not in self.unusable]
        for fp in added:
            try:
                self.served[fp] = self._build(fp, certificates[fp])
            except (CertificateError, SSL.Error, ValueError) as error:
                self.unusable.add(fp)
                log.error("cannot serve the certificate %s on %s: %s", fp, self.address, error)
        added = [fp for fp in added if fp in self.served]
        if len(removed) == 1 and len(added) == 1:  # a replacement keeps its place (the default)
            self.order[self.order.index(removed[0])] = added[0]
        else:
            self.order = [fp for fp in self.order if fp not in removed] + added
        for fp in removed:
            self.served.pop(fp, None)
        self._index()

    def _build(self, fingerprint: str, entry: dict) -> _Served:
        leaf, *extra = load_certificates(entry["certificate"], "certificate")
        chain = extra + [c for pem in entry.get("certificate_chain", ())
                         for c in load_certificates(pem, "certificate_chain")]
        context = _new_context(self.config, self.session_id)
        context.use_certificate(leaf)
        context.use_privatekey(load_key(entry["key"]))
        for certificate in chain:
            context.add_extra_chain_cert(certificate)
        context.check_privatekey()
        names = tuple(n.lower() for n in entry.get("names") or ()) or certificate_names(leaf)
        return _Served(fingerprint, context, names, leaf.not_valid_after_utc)

    def _index(self) -> None:
        exact: dict[str, _Served] = {}
        wildcard: dict[str, _Served] = {}
        for fp in self.order:
            served = self.served[fp]
            for name in served.names:
                table, key = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
                current = table.get(key)
                if current is None or served.not_after >= current.not_after:
                    table[key] = served
        self.exact = {name: served.context for name, served in exact.items()}
        self.wildcard = {name: served.context for name, served in wildcard.items()}
        self.default = self.served[self.order[0]].context if self.order else None

    def select(self, server_name: str | None) -> SSL.Context | None:
        """The context for a handshake: exact name, then wildcard, else the default."""
        if server_name:
            name = server_name.lower().rstrip(".")
            context = self.exact.get(name)
            if context is not None:
                return context
            label, _, parent = name.partition(".")
            if label and parent:
                context = self.wildcard.get(parent)
                if context is not None:
                    return context
        return self.default

    def _on_servername(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        context = self.select(raw.decode("ascii", "replace") if raw else None)
        if context is not None:
            connection.set_context(context)

    def _new_session_context(self) -> None:
        """The context every handshake starts in: its SNI callback, and the ticket key (OpenSSL
        seals and opens tickets with the key of the context a connection was made from, whatever
        certificate's context the SNI callback moves it to)."""
        self.session_context = _new_context(self.config, self.session_id)
        self.session_context.set_tlsext_servername_callback(self._on_servername)
        self.session_context_since = time.monotonic()

    def connection(self) -> SSL.Connection:
        if time.monotonic() - self.session_context_since >= TICKET_KEY_LIFETIME:
            self._new_session_context()  # the old one lives as long as its connections
        connection = SSL.Connection(self.session_context, None)  # memory BIOs
        connection.set_accept_state()
        return connection


class TlsContexts:
    """The TLS contexts of every https listener of a worker, following the state."""

    def __init__(self):
        self.listeners: dict[str, ListenerContexts] = {}

    def update(self, state) -> None:
        listeners = {}
        for address, listener in state.listeners.items():
            if listener.protocol != "https":
                continue
            contexts = self.listeners.get(address)
            if contexts is None or contexts.config != listener.config:
                try:
                    contexts = ListenerContexts(address, listener.config)
                except CertificateError as error:
                    log.error("cannot serve TLS on %s: %s", address, error)
                    continue
            contexts.update(state.certificates.get(address, {}))
            listeners[address] = contexts
        self.listeners = listeners

    def get(self, address: str) -> ListenerContexts | None:
        return self.listeners.get(address)


# --- connections (worker) -------------------------------------------------------------------------

class TLSError(ConnectionError):
    """A TLS failure on a connection; an OSError, so the session treats it as a broken client."""


class TLSSocket(StreamSocketCalls):
    """A server-side TLS connection over a (gevent) socket, with the socket methods the HTTP
    session uses. Only one greenlet reads and one writes at a time (the tunnel has one of each)."""

    def __init__(self, connection: SSL.Connection, sock, read_size: int = RECORD_SIZE + 1024):
        self._tls = connection
        self._sock = sock
        self._read_size = read_size
        self._flushing = False
        self._eof = False
        self.established = False

    # -- handshake -----------------------------------------------------------------------------
    def handshake(self, deadline: float) -> None:
        """Complete the handshake by `deadline` (time.monotonic()), or raise socket.timeout or
        TLSError (after sending the alert that says why, when there is one)."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except SSL.WantReadError:
                self._flush()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("TLS handshake not finished in time") from None
                self._sock.settimeout(remaining)
                if not self._fill():
                    raise TLSError("the client closed the connection during the handshake") from None
            except SSL.Error as error:
                try:
                    self._flush()
                except OSError:
                    pass  # the alert is a courtesy
                raise TLSError(_describe(error)) from None
        self._flush()
        self.established = True

    @property
    def server_name(self) -> str | None:
        raw = self._tls.get_servername()
        return raw.decode("ascii", "replace") if raw else None

    @property
    def alpn(self) -> bytes | None:
        """The protocol ALPN chose (b"h2", b"http/1.1"), None without ALPN."""
        return self._tls.get_alpn_proto_negotiated() or None

    @property
    def version(self) -> str:
        return self._tls.get_protocol_version_name()

    # -- I/O -----------------------------------------------------------------------------------
    def _fill(self) -> bool:
        """Feed OpenSSL what the socket has; False at end of stream."""
        data = self._sock.recv(self._read_size)
        if not data:
            self._eof = True
            self._tls.bio_shutdown()
            return False
        self._tls.bio_write(data)
        return True

    def _flush(self) -> None:
        """Send what OpenSSL has written. A greenlet already flushing sends it all."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while True:
                try:
                    data = self._tls.bio_read(65536)
                except SSL.WantReadError:
                    return
                self._sock.sendall(data)
        finally:
            self._flushing = False

    def recv(self, size: int, flags: int = 0) -> bytes:
        while True:
            try:
                data = self._tls.recv(size)
            except SSL.WantReadError:
                if self._eof:
                    return b""
                self._flush()
                self._fill()
                continue
            except SSL.ZeroReturnError:  # close_notify
                return b""
            except SSL.Error as error:
                if self._eof:  # closed without close_notify: an end of stream like any other
                    return b""
                raise TLSError(_describe(error)) from None
            self._flush()  # a read may make OpenSSL answer (a TLS 1.3 key update)
            return data

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), RECORD_SIZE):
            try:
                self._tls.send(view[start:start + RECORD_SIZE])
            except SSL.Error as error:
                raise TLSError(_describe(error)) from None
            self._flush()

    def settimeout(self, timeout) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self):
        return self._sock.gettimeout()

    def setsockopt(self, *args) -> None:
        self._sock.setsockopt(*args)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self):
        return self._sock.getpeername()

    def getsockname(self):
        return self._sock.getsockname()

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends close_notify first (the writer calls it); SHUT_RDWR may come from
        another greenlet (closing idle connections), so it only shuts the socket."""
        if how == socket.SHUT_WR and self.established:
            try:
                self._tls.shutdown()
                self._flush()
            except (SSL.Error, OSError):
                pass  # the peer is gone: the socket shutdown below says the rest
        self._sock.shutdown(how)

    def close(self) -> None:
        """close_notify if it fits in the socket buffer right now (never waits), then close."""
        if self.established and not self._flushing:
            try:
                self._tls.shutdown()
                self._sock.settimeout(0.0)
                self._flush()
            except (SSL.Error, OSError):
                pass  # a courtesy only
        self._sock.close()


def _describe(error: SSL.Error) -> str:
    """The OpenSSL reason of an error, e.g. 'unsupported protocol'."""
    if isinstance(error, SSL.SysCallError):
        return f"system error {error.args}"
    reasons = [entry[2] for entry in (error.args[0] if error.args else ()) if len(entry) == 3]
    return ", ".join(reasons) or str(error) or type(error).__name__


# --- the connection greenlet ------------------------------------------------------------------

def serve(serve_http, ctx, listener, sock, client_address, serve_h2=None) -> None:
    """An https connection: (PROXY header,) handshake within request_timeout, then HTTP/1.1,
    or HTTP/2 (serve_h2) when ALPN chose h2."""
    deadline = time.monotonic() + listener.request_timeout
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if listener.expect_proxy:
            from sozu.tcp import accept_proxy_header  # worker only: sozu.tcp imports gevent
            client_address = accept_proxy_header(ctx, listener, sock, client_address, deadline)
            if client_address is None:
                sock.close()
                return
        contexts = ctx.tls.get(listener.address)
        if contexts is None or contexts.default is None:
            log.warning("no certificate to serve on %s: closing the connection", listener.address)
            ctx.metrics.incr("tls_no_certificate")
            sock.close()
            return
        tls_socket = TLSSocket(contexts.connection(), sock, ctx.buffer_size + 1024)
        tls_socket.handshake(deadline)
    except socket.timeout:
        ctx.metrics.incr("tls_handshake_timeouts")
        log.debug("%s: TLS handshake timed out", _ip(client_address))
        sock.close()
        return
    except OSError as error:  # TLSError included
        ctx.metrics.incr("tls_handshake_failures")
        log.debug("%s: TLS handshake failed: %s", _ip(client_address), error)
        sock.close()
        return
    except Exception:  # the connection edge: never the worker
        log.exception("%s: unexpected error during the TLS handshake", _ip(client_address))
        sock.close()
        return
    ctx.metrics.incr("tls_handshakes")
    serve = serve_h2 if serve_h2 is not None and tls_socket.alpn == b"h2" else serve_http
    serve(ctx, listener, tls_socket, client_address)


def _ip(client_address) -> str:
    return client_address[0] if client_address else "-"
