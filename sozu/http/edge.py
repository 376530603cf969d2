"""The edge of an HTTP connection: where every error of its session ends (worker only, gevent).

serve() runs a session (sozu.http.session) in the connection's greenlet and is one of the three
places where errors are caught. An `Answer` carries the status to answer (with `Connection:
close`) if nothing of a response was sent yet; a client that went away is closed quietly; a
backend failing after the response head was sent (`Aborted`) ends the connection, which the
client sees as a truncated body; anything else is a bug, logged once with its traceback and
answered 500. When the client may still be sending (after an error answer, or an early backend
answer), the connection reads and drops its input for a moment before closing (a "lingering
close", as nginx does): closing with unread input makes the kernel reset the connection, and a
reset can destroy the answer before the client has read it.
"""
from __future__ import annotations

import logging

from gevent import socket

from sozu.http import answers
from sozu.http.exchange import Aborted, Answer, ClientGone, Exchange
from sozu.http.session import CLOSING, HttpSession
from sozu.http.sockio import linger

log = logging.getLogger("sozu.http")

LINGER_SECONDS = 2.0  # the longest an error answer waits for the client to stop sending
ROUTINE = frozenset((301, 302, 307, 308, 404))  # answers logged at debug level: redirects, no route


def serve(ctx, listener, sock, client_address) -> None:
    """The connection greenlet. ctx: the worker's SessionContext (sozu.http.context)."""
    session = HttpSession(ctx, listener, sock, client_address)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # a TLS handshake had its own; from here on, deadlines
        session.run()
    except Answer as answer:
        _close(session)  # the error answer bounds its own waits
        if not session.response_started:
            _send_error(session, answer.status, answer.body or session.error_answer(answer.status, answer.detail))
        level = (logging.WARNING if answer.status >= 500 else
                 logging.DEBUG if answer.status in ROUTINE else logging.INFO)
        log.log(level, "%s: %d %s", session.describe(), answer.status, answer.detail)
    except ClientGone as gone:
        log.debug("%s: connection ended: %s", session.describe(), gone)
    except Aborted as aborted:
        log.warning("%s: response aborted: %s", session.describe(), aborted)
    except Exception:  # the connection edge (docs/architecture.md, "Errors"): never the worker
        _close(session)
        log.exception("%s: unexpected error; the connection is closed", session.describe())
        if not session.response_started:
            _send_error(session, 500, answers.default_answer(500))
    finally:
        _close(session)  # what follows bounds its own waits
        try:
            session.finish_exchange()
            if session.body_unread:
                linger(sock, LINGER_SECONDS)
        except Exception:  # still the edge: a bug in the closing steps must not skip the close
            log.exception("%s: unexpected error while closing the connection", session.describe())
        sock.close()


def _close(session) -> None:
    """CLOSING, from whichever state the session was in (every state may end there)."""
    if session.state is not CLOSING:
        session.enter(CLOSING)


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


