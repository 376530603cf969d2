"""What an HTTP session may use of its worker, named (worker only).

A session gets this, never the Worker: the routing view (router and applications, replaced
together when the worker applies a batch of orders), the backends (connect with passive health,
the pool of idle connections), the body buffers it may borrow, the deadlines that bound its
waits, where it records what happened (metrics, access log), the limits its parsing enforces,
and whether the worker is draining. The worker keeps the fields current.
"""
from __future__ import annotations

from sozu import access_log as access_lines
from sozu.http.parser import DEFAULT_LIMITS


class SessionContext:
    __slots__ = ("router", "applications", "backends", "backend_pool", "body_buffers", "deadlines",
                 "metrics", "access_log", "buffer_size", "limits", "idle_sockets", "draining")

    def __init__(self, *, router, applications, backends, backend_pool, body_buffers, deadlines,
                 metrics, buffer_size: int, limits=DEFAULT_LIMITS, access_log=access_lines):
        self.router = router                # route_http(address, host, path, https, method)
        self.applications = applications    # app_id -> the application's settings
        self.backends = backends            # sozu.connector.BackendConnector
        self.backend_pool = backend_pool    # idle backend connections (sozu.http.backend_pool)
        self.body_buffers = body_buffers    # large buffers lent for bodies (sozu.http.buffers)
        self.deadlines = deadlines          # sozu.http.deadlines.Deadlines
        self.metrics = metrics
        self.access_log = access_log        # sozu.access_log: http(client_ip, exchange, request_id)
        self.buffer_size = buffer_size      # one read's size
        self.limits = limits                # what a head may hold (sozu.http.parser.Limits)
        self.idle_sockets: set = set()      # idle keep-alive clients, closed when draining
        self.draining = False
