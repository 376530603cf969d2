"""TCP listeners: a byte relay between a client and a backend (worker only, gevent).

Theory of operation
-------------------
The connection greenlet (one slot of the worker's connection pool):

  (PROXY header, when the listener expects one or the application says ExpectHeader)
  -> route_tcp(listener address) -> application -> pick a backend and connect within
     connect_timeout; a failed connect marks the backend down (passive health) and the next one
     is tried; none left: the client connection is closed at once
  -> (PROXY header to the backend: v2, or the client's own header relayed as it is)
  -> relay, then close both sides and log one access line.

The relay (sozu.relay, shared with HTTP's Upgrade tunnels) copies both ways with one buffer per
direction, passes a half-close on, and ends when the client side has seen no progress for
front_timeout or the backend side for back_timeout. connect_timeout bounds each backend connect.

`accept_proxy_header` serves every listener with expect_proxy: http (before the session),
https (before the handshake) and tcp. It never reads past the header (see sozu.proxy_protocol).
"""
from __future__ import annotations

import logging
import socket as stdsocket
import time

from gevent import socket

from sozu import access_log as access_lines
from sozu import proxy_protocol
from sozu.connector import connect
from sozu.relay import Relay

log = logging.getLogger("sozu.tcp")
access_log = logging.getLogger("sozu.access")


# --- PROXY protocol on incoming connections ---------------------------------------------------

def read_proxy_header(sock, deadline: float) -> proxy_protocol.ProxyHeader:
    """Read exactly one PROXY header from `sock` by `deadline` (time.monotonic()); raises
    ProxyProtocolError (malformed, or closed before its end) or socket.timeout."""
    buf = b""
    while True:
        parsed = proxy_protocol.parse(buf)
        if parsed is not None:
            return parsed[0]
        wanted = proxy_protocol.bytes_wanted(buf)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no complete PROXY header in time")
        sock.settimeout(remaining)
        if wanted is None:  # a v1 line: take what is there up to its LF, never past it
            peeked = sock.recv(proxy_protocol.V1_MAX_LENGTH - len(buf), stdsocket.MSG_PEEK)
            end = peeked.find(b"\n")
            wanted = end + 1 if end >= 0 else len(peeked)
            if not wanted:
                raise proxy_protocol.ProxyProtocolError("connection closed in the PROXY header")
        data = sock.recv(wanted)
        if not data:
            raise proxy_protocol.ProxyProtocolError("connection closed in the PROXY header")
        buf += data


def client_of(header: proxy_protocol.ProxyHeader | None, client_address):
    """The real client: the header's source, unless it is LOCAL or has no address."""
    if header is None or header.local or header.source is None:
        return client_address
    return header.source


def accept_proxy_header(ctx, listener, sock, client_address, deadline: float,
                        keep: dict | None = None):
    """The real client address after the PROXY header, or None (logged, counted) when the
    header is malformed or late: the caller closes the connection. `keep` receives the header."""
    peer = client_address[0] if client_address else "-"
    try:
        header = read_proxy_header(sock, deadline)
    except proxy_protocol.ProxyProtocolError as error:
        ctx.metrics.incr("proxy_protocol_errors")
        log.warning("%s: bad PROXY header on %s: %s", peer, listener.address, error)
        return None
    except socket.timeout:
        ctx.metrics.incr("proxy_protocol_timeouts")
        log.info("%s: no PROXY header in time on %s", peer, listener.address)
        return None
    except OSError as error:
        log.debug("%s: connection ended in the PROXY header: %s", peer, error)
        return None
    if keep is not None:
        keep["header"] = header
    return client_of(header, client_address)


def serve_after_proxy_header(serve, ctx, listener, sock, client_address) -> None:
    """An http listener with expect_proxy: the header, then the session with the real client."""
    deadline = time.monotonic() + listener.request_timeout
    real = accept_proxy_header(ctx, listener, sock, client_address, deadline)
    if real is None:
        sock.close()
        return
    serve(ctx, listener, sock, real)


# --- the connection greenlet ----------------------------------------------------------------------

def serve(ctx, listener, sock, client_address) -> None:
    """A tcp listener's connection: its greenlet is the connection edge, where every error of
    the connection ends (docs/architecture.md, "Errors")."""
    start = time.monotonic()
    client = client_address
    app_id = backend_address = "-"
    connected = 0.0
    relay = None
    reason = "closed"
    backend = connection = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx.metrics.incr("tcp_connections")
        app_id = ctx.router.route_tcp(listener.address)
        application = ctx.applications.get(app_id) if app_id is not None else None
        if application is None:
            ctx.metrics.incr("tcp_no_route")
            log.info("%s: no tcp application on %s: closing", _ip(client), listener.address)
            app_id, reason = "-", "no application"
            return
        proxy_mode = application.get("proxy_protocol")
        received = {}
        if listener.expect_proxy or proxy_mode == "ExpectHeader":
            deadline = start + min(listener.front_timeout, listener.request_timeout)
            client = accept_proxy_header(ctx, listener, sock, client_address, deadline, received)
            if client is None:
                reason = "bad PROXY header"
                return
        backend, connection, _ = ctx.backends.connect(
            app_id, lambda address: connect(address, listener.connect_timeout, socket.socket))
        if connection is None:
            ctx.metrics.incr("tcp_no_backend")
            log.warning("no backend of %s could be reached", app_id)
            reason = "no backend"
            return
        backend_address = backend.address
        connected = time.monotonic()
        if proxy_mode in ("SendHeader", "RelayHeader"):
            connection.sendall(_proxy_header(proxy_mode, received.get("header"), client, sock,
                                             application.get("send_proxy_version", 2)))
        sock.settimeout(None)
        connection.settimeout(None)
        relay = Relay(sock, connection, ctx.buffer_size, listener.front_timeout,
                      listener.back_timeout)
        reason = relay.run()
        if reason.endswith("timeout"):
            ctx.metrics.incr("tcp_timeouts")
    except OSError as error:
        reason = f"failed: {error}"
    except Exception:  # the connection edge: a bug ends this connection, never the worker
        log.exception("%s: unexpected error on a tcp connection", _ip(client))
        reason = "internal error"
    finally:
        if backend is not None:
            ctx.backends.release(app_id, backend)
        if connection is not None:
            connection.close()
        sock.close()
        bytes_in = relay.bytes_in if relay else 0
        bytes_out = relay.bytes_out if relay else 0
        ctx.metrics.incr("tcp_bytes_in", bytes_in)
        ctx.metrics.incr("tcp_bytes_out", bytes_out)
        if not access_log.disabled:
            access_lines.tcp(_ip(client), app_id, backend_address, reason, bytes_in, bytes_out,
                             (time.monotonic() - start) * 1000,
                             (connected - start) * 1000 if connected else None)


def _proxy_header(mode: str, received, client, sock, version: int) -> bytes:
    if mode == "RelayHeader" and received is not None:
        return received.raw
    destination = None
    if received is not None and not received.local and received.destination is not None:
        destination = received.destination
    if destination is None:
        destination = sock.getsockname()[:2]
    source = client[:2] if client else None
    return proxy_protocol.encode(version, source, destination)


def _ip(client_address) -> str:
    return client_address[0] if client_address else "-"
