"""Connecting to backends, for HTTP sessions and TCP connections (worker only): `connect`
opens one connection, and BackendConnector picks the backend, with passive health.

A request's application has backends (sozu.lb); BackendConnector.connect picks one, opens a
connection to it, and on failure marks it down for a backoff and tries the next, so one dead
backend costs no user a failed request while another is up. What the worker must hear of it (a
backend down or up again, an application left with none) is reported through
`report(kind, app_id, backend)`.
"""
from __future__ import annotations

import logging
import socket
import time

from sozu.address import sockaddr

log = logging.getLogger("sozu.worker")

EVENT_INTERVAL = 1.0  # s between two NO_AVAILABLE_BACKENDS events of one application


class BackendConnector:
    def __init__(self, balancer, metrics, report):
        self.balancer = balancer
        self.metrics = metrics
        self.report = report
        self.no_backend_reported: dict[str, float] = {}  # app_id -> when it was last reported

    def connect(self, app_id: str, open_connection, sticky_id=None, reuse=None):
        """(backend, connection, reused): a connection to a backend of the application, trying
        each usable backend once; (None, None, False) when none could be reached. The backend
        is acquired (the caller releases it). reuse(backend) may give an idle connection;
        otherwise open_connection(address) opens one (OSError when it fails). A failed connect
        marks the backend down for a backoff (passive health) and the next one is tried."""
        backends = self.balancer.backends(app_id)
        tried = set()
        while backends is not None:
            backend = backends.pick(time.monotonic(), tried, sticky_id)
            if backend is None:
                break
            tried.add(backend)
            backends.acquire(backend)
            connection = reuse(backend) if reuse is not None else None
            if connection is not None:
                return backend, connection, True
            try:
                connection = open_connection(backend.address)
            except OSError as error:
                backends.release(backend)
                self.metrics.connect_error(app_id, backend.address, retried=len(tried) < len(backends))
                # The time of the failure, not of the pick: a connect that timed out after the
                # first backoff (1 s) would otherwise leave the backend already up again.
                if backends.mark_failure(backend, time.monotonic(), str(error)):
                    log.warning("backend %s (%s) of %s is down: %s", backend.backend_id,
                                backend.address, app_id, error)
                    self.report("BACKEND_DOWN", app_id, backend)
                continue
            if backends.mark_success(backend):
                log.info("backend %s (%s) of %s is up again", backend.backend_id, backend.address, app_id)
                self.report("BACKEND_UP", app_id, backend)
            return backend, connection, False
        now = time.monotonic()
        if self.no_backend_reported.get(app_id, 0.0) <= now - EVENT_INTERVAL:
            # Once a second at most: a dead application under load must not flood the master.
            self.no_backend_reported[app_id] = now
            self.report("NO_AVAILABLE_BACKENDS", app_id, None)
        return None, None, False

    def release(self, app_id: str, backend) -> None:
        backends = self.balancer.backends(app_id)
        if backends is not None:
            backends.release(backend)


def connect(address: str, timeout: float, socket_class=socket.socket):
    """A connection to a numeric IP:PORT (never a name lookup: workers may be chrooted), with
    Nagle off: the proxy writes whole messages and must not wait for acknowledgements. Workers
    pass gevent's socket class."""
    family, addr = sockaddr(address)
    connection = socket_class(family, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(addr)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:  # a clean-up, not a catch: the error (a timeout, a killed greenlet) goes on up
        connection.close()
        raise
    return connection
