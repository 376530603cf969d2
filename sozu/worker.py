"""A worker process: serves every listener with gevent, applies the master's orders (after fork only).

Theory of operation
-------------------
The master forks a worker with everything it needs already in memory: the configuration, its own
copy of the state, the listening sockets and one end of a socketpair (its channel). This module
is imported only in the child, after fork: the master never has gevent loaded, so there is no hub
or thread state to inherit. The worker builds everything it needs (gevent's hub, its sockets and
every module it will use), then drops privileges (sozu.sandbox): afterwards it may no longer be
able to read the Python installation, the configuration or the certificates.

Each active listener gets a gevent StreamServer; all of them share one Pool(max_connections), the
worker's connection limit. A full pool makes every server stop watching its listening socket, so
new connections wait in the kernel backlog where a sibling worker with room takes them.

One greenlet reads the channel. Each order is applied with the same `ConfigState.dispatch` the
master uses, then the derived tables (router, balancer) are rebuilt from the state: they are never
patched by hand, so they cannot drift from it. The answer goes back on the channel.

Stopping: a soft stop closes this worker's copies of every listening socket (never shutdown(),
which would stop the socket in every process that shares it), closes idle keep-alive connections,
lets in-flight requests finish within the grace period, then exits. A hard stop exits now.
"""
from __future__ import annotations

import encodings.idna  # noqa: F401 - used by host.encode("idna"); imported before the sandbox
import collections
import logging
import os
import signal
import socket as stdsocket
import sys
import time

import gevent
import gevent.event
import gevent.lock
import gevent.pool
from gevent import socket as gsocket
from gevent.server import StreamServer

from sozu import logs, seccomp, tcp, tls
from sozu.channel import ChannelClosed, WorkerChannel
from sozu.connector import BackendConnector
from sozu.http import answers
from sozu.http.backend_pool import BackendPool
from sozu.http.buffers import BodyBuffers
from sozu.http.context import SessionContext
from sozu.http.deadlines import Deadlines
from sozu.http.edge import serve as serve_session
from sozu.http2.connection import serve as serve_h2, serve_cleartext
from sozu.lb import Balancer
from sozu.listeners import WorkerSockets, is_listener_order
from sozu.messages import MessageError, Order
from sozu.metrics import Metrics
from sozu.router import Router
from sozu.state import StateError, answer_query
from sozu.vocabulary import DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_STICKY_NAME, LISTENER_TIMEOUTS

log = logging.getLogger("sozu.worker")

EXIT_OK = 0
CAPACITY_TICK = 0.1  # s: a connection waiting while every worker is full is refused within this
REFUSE_BATCH = 256    # connections refused per listener per tick, so refusing never starves serving
LINGER_TIME = 1.0     # s: a refused HTTP connection stays open this long for the client to close it
LINGER_MAX = 128      # refused connections lingering at once, at most (fds: within FDS_MARGIN)
EXIT_SANDBOX_FAILED = 3  # named so the master can tell a boot failure from a crash


class ListenerInfo:
    """What a session needs to know about the listener it was accepted on, precomputed."""

    __slots__ = ("address", "protocol", "https", "scheme", "port", "by", "front_timeout",
                 "back_timeout", "connect_timeout", "request_timeout", "answers",
                 "sticky_name", "expect_proxy", "http2_max_concurrent_streams",
                 "h2c_prior_knowledge")

    def __init__(self, address: str, protocol: str, config: dict):
        self.address = address
        self.protocol = protocol
        self.https = protocol == "https"
        self.scheme = b"https" if self.https else b"http"
        host, _, port = address.rpartition(":")
        self.port = port.encode()
        self.by = (b'"' + address.encode() + b'"') if host.startswith("[") else address.encode()
        self.front_timeout = config.get("front_timeout", LISTENER_TIMEOUTS["front_timeout"])
        self.back_timeout = config.get("back_timeout", LISTENER_TIMEOUTS["back_timeout"])
        self.connect_timeout = config.get("connect_timeout", LISTENER_TIMEOUTS["connect_timeout"])
        self.request_timeout = config.get("request_timeout", LISTENER_TIMEOUTS["request_timeout"])
        self.answers = {status: answers.template(config[f"answer_{status}"])
                        for status in answers.CUSTOM_STATUSES if config.get(f"answer_{status}")}
        self.sticky_name = config.get("sticky_name", DEFAULT_STICKY_NAME).encode()
        self.expect_proxy = config.get("expect_proxy", False)
        self.http2_max_concurrent_streams = config.get("http2_max_concurrent_streams",
                                                       DEFAULT_MAX_CONCURRENT_STREAMS)
        self.h2c_prior_knowledge = config.get("h2c_prior_knowledge", False)  # http only


class Worker:
    def __init__(self, worker_id: int, config, state, sockets: dict, channel_sock, load_board=None,
                 metrics_enabled: bool = True):
        self.worker_id = worker_id
        self.config = config
        self.state = state
        self.buffer_size = config.buffer_size
        # This worker's copies of the listening sockets, each with its refuser, a plain
        # non-blocking duplicate to refuse connections when every worker is full without going
        # through the StreamServer and its pool (sozu.listeners).
        self.listening = WorkerSockets(sockets, gsocket.socket)
        self.channel = WorkerChannel(gsocket.socket(fileno=channel_sock.detach()),
                                     config.max_command_message_size, gevent.lock.Semaphore())
        self.pool = gevent.pool.Pool(config.max_connections)
        self.servers: dict[str, StreamServer] = {}
        self.listener_infos: dict[str, ListenerInfo] = {}
        self.router: Router | None = None
        self.balancer = Balancer()
        self.backend_pool = BackendPool()
        self.deadlines = Deadlines()
        self.tls = tls.TlsContexts()  # per https listener: SSL contexts, built on state changes
        self.metrics = Metrics(metrics_enabled)
        self.backends = BackendConnector(self.balancer, self.metrics, self.event)
        # What HTTP sessions see of this worker (kept current by rebuild() and soft_stop()).
        self.sessions = SessionContext(
            router=None, applications={}, backends=self.backends, backend_pool=self.backend_pool,
            body_buffers=BodyBuffers(config.buffer_size), deadlines=self.deadlines,
            metrics=self.metrics, buffer_size=config.buffer_size)
        self.lingering: collections.deque = collections.deque()  # refused: (deadline, socket)
        self.draining = False
        self.stopped = gevent.event.Event()
        self.state_changed = False
        self.load_board = load_board
        gevent.get_hub()  # the hub loads its modules lazily: before the sandbox hides them

    # -- what sessions read ------------------------------------------------------------------
    @property
    def applications(self):
        return self.state.applications

    def event(self, kind: str, app_id: str, backend) -> None:
        message = {"type": "EVENT", "data": {"kind": kind, "app_id": app_id,
                                              "backend_id": getattr(backend, "backend_id", None),
                                              "address": getattr(backend, "address", None)}}
        try:
            self.channel.send(message)
        except OSError:
            log.debug("could not report %s to the master", kind)

    # -- state -------------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Derive the routing tables from the state, and serve exactly the active listeners."""
        self.router = Router.from_state(self.state, self.router)  # unchanged hosts are reused
        self.sessions.router, self.sessions.applications = self.router, self.state.applications
        self.balancer.update(self.state)
        self.tls.update(self.state)
        live = {b["address"] for backends in self.state.backends.values() for b in backends}
        for address in list(self.backend_pool.idle):
            if address not in live:  # a removed backend's idle connections go now
                self.backend_pool.drop(address)
        for address, listener in self.state.listeners.items():
            self.listener_infos[address] = ListenerInfo(address, listener.protocol, listener.config)
        for address in list(self.servers):
            listener = self.state.listeners.get(address)
            if listener is None or not listener.active:
                self.stop_listener(address)
        self.listening.forget(self.state.listeners)  # removed: this worker's copies go
        for address in list(self.listener_infos):
            if address not in self.state.listeners:
                del self.listener_infos[address]
        if not self.draining:
            for address, listener in self.state.listeners.items():
                if listener.active and address not in self.servers:
                    self.start_listener(address)

    def start_listener(self, address: str) -> None:
        sock = self.listening.sockets.get(address)
        if sock is None:
            log.error("no socket for listener %s", address)
            return
        info = self.listener_infos[address]
        serve = self.handler_for(info)
        incr = self.metrics.incr

        def handler(sock, addr):
            incr("accepted_connections")
            return serve(sock, addr)
        # The server gets its own duplicate of the listening fd, so that stop_listener() can
        # close() it: closing is what stops it for good (see there), and it closes only this copy.
        server = StreamServer(sock.dup(), handler, spawn=self.pool)
        server.max_accept = 1  # one connection per wake-up: fair between the workers sharing the socket
        server.start()
        self.servers[address] = server

    def handler_for(self, info: ListenerInfo):
        """The connection greenlet's function of a listener: (sock, addr) -> None."""
        if info.protocol == "tcp":
            return lambda sock, addr: tcp.serve(self, info, sock, addr)
        sessions = self.sessions

        def serve_http(_worker, listener, sock, addr):  # the plain bytes, or those of a TLS stream
            serve_session(sessions, listener, sock, addr)

        if info.protocol == "https":  # the PROXY header, if expected, comes before the handshake
            def serve_http2(_worker, listener, sock, addr):  # after a handshake that chose h2
                serve_h2(sessions, listener, sock, addr)
            return lambda sock, addr: tls.serve(serve_http, self, info, sock, addr, serve_http2)
        if info.h2c_prior_knowledge:  # HTTP/2 or HTTP/1.x, by the first bytes
            def serve_plain(_worker, listener, sock, addr):
                serve_cleartext(sessions, listener, sock, addr, serve_session)
        else:
            serve_plain = serve_http
        if info.expect_proxy:  # the PROXY header first, then the plain bytes
            return lambda sock, addr: tcp.serve_after_proxy_header(serve_plain, self, info, sock, addr)
        return lambda sock, addr: serve_plain(self, info, sock, addr)

    def stop_listener(self, address: str) -> None:
        server = self.servers.pop(address, None)
        if server is not None:
            # Never shutdown() here: the listening socket is shared with the other workers and
            # the next generation. close() shuts only this server's own duplicate of the fd, and
            # marks it stopped: stop_accepting() alone is undone as soon as a connection ends
            # after the pool was full (gevent re-arms a started server from the pool's
            # semaphore), and a draining worker would accept again and drop what it accepts.
            server.close()

    # -- channel -----------------------------------------------------------------------------
    def read_channel(self) -> None:
        """Apply the master's messages batch by batch: the routing tables are rebuilt once per
        batch, before the answers leave (an OK means "served from now on"), and other greenlets
        run between batches, so a LOAD_STATE of thousands of orders never stalls the traffic."""
        try:
            while True:
                batch = self.channel.receive()
                self.state_changed = False
                answers = [self.handle_message(message) for message in batch]
                if self.state_changed:
                    self.rebuild()
                for answer in answers:
                    if answer is not None:
                        self.channel.send(answer)
                gevent.sleep(0)
        except ChannelClosed:
            log.warning("the master is gone; stopping")
            self.soft_stop()

    def handle_message(self, message) -> dict | None:
        """The command edge: whatever goes wrong, an ERROR answer and the worker goes on."""
        if isinstance(message, MessageError):
            log.error("bad message from the master: %s", message)
            return None
        request_id = message.get("id", "")
        try:
            data = self.execute(message)
        except (MessageError, StateError) as error:
            return {"id": request_id, "status": "ERROR", "message": str(error), "data": None}
        except Exception as error:  # the worker's channel edge: a bug fails this order, not the worker
            log.exception("failed to apply %s", message.get("type"))
            return {"id": request_id, "status": "ERROR", "message": f"worker error: {error}", "data": None}
        return {"id": request_id, "status": "OK", "message": "", "data": data}

    def execute(self, message: dict):
        kind = message.get("type")
        if kind == "PING":
            return None
        if kind != "PROXY":
            raise MessageError(f"unknown message type {kind!r}")
        order = Order.from_json(message["data"])
        if order.type == "SOFT_STOP":
            gevent.spawn(self.soft_stop)
        elif order.type == "HARD_STOP":
            gevent.spawn(self.hard_stop)
        elif order.type == "LOGGING":
            logs.apply_filter(order.data)
        elif order.type == "METRICS":
            if order.data == "CLEAR":
                self.metrics.clear()
            elif order.data is not None:  # ENABLE | DISABLE
                self.metrics.enabled = order.data == "ENABLE"
            return self.metrics_snapshot()
        elif order.type == "STATUS":
            return {"active_connections": len(self.pool), "draining": self.draining}
        elif order.type == "QUERY":
            return self.query(order.data)
        elif order.type == "TEST_FORBIDDEN_CALL":  # exists only in tests (sozu.messages)
            return seccomp.forbidden_call(order.data)
        else:
            if is_listener_order(order):  # its socket came with it (sozu.listeners)
                self.listening.adopt(order.data["front"], self.channel.take_fds(message.get("fds", 0)))
            self.state.dispatch(order)
            self.state_changed = True
        return None

    def metrics_snapshot(self) -> dict:
        """The counters, with the gauges of now: connections, and the backends this worker
        rests after a failed connect (passive health; summed over workers by the master)."""
        snapshot = self.metrics.snapshot({"active_connections": len(self.pool),
                                          "idle_backend_connections": len(self.backend_pool)})
        now = time.monotonic()
        for app_id in self.state.backends:
            for backend in self.balancer.backends(app_id) or ():
                if not backend.is_up(now) and not backend.checked_down:
                    app = snapshot["applications"].setdefault(app_id, {"backends": {}})
                    app["backends"].setdefault(backend.address, {})["resting"] = 1
        return snapshot

    # -- the connection limit ----------------------------------------------------------------
    def watch_capacity(self) -> None:
        """Publish this worker's load; when every worker is full, refuse what waits
        (docs/architecture.md, "Connection limit")."""
        limit = self.config.max_connections
        while not self.draining:
            load = len(self.pool)
            if self.load_board is not None:
                self.load_board.publish(self.worker_id, load, limit)
                if load >= limit and self.load_board.everyone_full():
                    self.refuse_waiting()
            if self.lingering:
                self.close_lingering()
            gevent.sleep(CAPACITY_TICK)

    def refuse_waiting(self) -> None:
        for address in self.servers:
            refuser = self.listening.refusers.get(address)
            info = self.listener_infos[address]
            for _ in range(REFUSE_BATCH):
                try:
                    conn, _ = refuser.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as error:
                    log.warning("refusing on %s failed: %s", address, error)
                    break
                self.metrics.incr("refused_connections")
                if info.protocol != "http":  # TLS and TCP: closed, nothing to say
                    conn.close()
                    continue
                _refuse_http(conn)
                if len(self.lingering) >= LINGER_MAX:
                    self.lingering.popleft()[1].close()
                self.lingering.append((time.monotonic() + LINGER_TIME, conn))

    def close_lingering(self) -> None:
        """A refused HTTP connection is closed once the client has closed its side, or after
        LINGER_TIME: closed while the client's request is still arriving, it would be reset, and
        the reset can destroy the 503 before the client reads it."""
        now = time.monotonic()
        for _ in range(len(self.lingering)):
            deadline, conn = self.lingering.popleft()
            if now >= deadline or _drained(conn):
                conn.close()
            else:
                self.lingering.append((deadline, conn))

    def query(self, query: dict):
        answer = answer_query(self.state, query)
        if query.get("type") == "BACKENDS":  # with this worker's own passive health
            now = time.monotonic()
            mine = {(app_id, *backend.key): backend for app_id in self.state.backends
                    for backend in self.balancer.backends(app_id) or ()}
            for row in answer:
                backend = mine.get((row["app_id"], row["backend_id"], row["address"]))
                if backend is not None:
                    row.update(resting=not backend.is_up(now) and not backend.checked_down,
                               failures=backend.failures, last_error=backend.last_error,
                               active_connections=backend.active_connections)
        return answer

    # -- stopping ----------------------------------------------------------------------------
    def soft_stop(self) -> None:
        if self.draining:
            return
        self.draining = self.sessions.draining = True
        log.info("soft stop: draining %d connections", len(self.pool))
        for address in list(self.servers):
            self.stop_listener(address)
        self.listening.close_all()
        self.close_idle()
        grace = self.config.shutdown_grace_period
        if not self.pool.join(timeout=grace):
            log.warning("grace period of %ss over: closing %d connections", grace, len(self.pool))
        self.stopped.set()

    def close_idle(self) -> None:
        """Idle keep-alive connections end now; their clients retry elsewhere."""
        for sock in list(self.sessions.idle_sockets):
            try:
                sock.shutdown(gsocket.SHUT_RDWR)
            except OSError:
                log.debug("idle connection already closed")

    def hard_stop(self) -> None:
        self.stopped.set()

    def run(self) -> int:
        self.rebuild()
        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.soft_stop))
        gevent.signal_handler(signal.SIGINT, self.hard_stop)
        gevent.signal_handler(signal.SIGQUIT, self.hard_stop)
        reader = gevent.spawn(self.read_channel)
        gevent.spawn(self.watch_capacity)
        gevent.spawn(self.deadlines.run)
        self.channel.send({"type": "READY", "data": {"listeners": sorted(self.servers)}})
        log.info("worker %d serving %d listeners", self.worker_id, len(self.servers))
        self.stopped.wait()
        reader.kill(block=False)
        self.backend_pool.close_all()
        return EXIT_OK


_SCRATCH = bytearray(4096)  # what refused clients send is read into this, and dropped


def _refuse_http(conn) -> None:
    """503 and close our side, with no greenlet and no buffer of its own. The request may not
    have arrived yet: the answer does not wait for it (the connection lingers, close_lingering)."""
    conn.setblocking(False)
    try:
        _drained(conn)
        conn.send(answers.OVER_CAPACITY)
        conn.shutdown(stdsocket.SHUT_WR)
    except OSError:
        log.debug("a refused client went away first")


def _drained(conn) -> bool:
    """Read and drop what the client sent; True once it has closed its side (or is gone). At
    most 64 KiB a call: a client that keeps sending cannot keep the worker here."""
    try:
        for _ in range(16):
            if not conn.recv_into(_SCRATCH):
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return False


def main(worker_id: int, config, state, sockets: dict, channel_sock, sandbox_plan=None,
         load_board=None, metrics_enabled: bool = True) -> None:
    """Entry point in the forked child. Never returns: the worker exits here."""
    code = EXIT_OK
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        logs.retag(f"WRK-{worker_id}")
        # Everything is loaded and opened before the sandbox: afterwards the worker may not be
        # able to read the Python installation or the configuration directory.
        from sozu import sandbox
        worker = Worker(worker_id, config, state, sockets, channel_sock, load_board, metrics_enabled)
        if sandbox_plan is not None:
            try:
                sandbox.apply(sandbox_plan)
            except sandbox.SandboxError as error:
                log.error("cannot apply the sandbox: %s; not serving", error)
                code = EXIT_SANDBOX_FAILED
                return
        code = worker.run()
    except BaseException:  # the worker process edge: whatever ends it is logged, then the exit code
        log.exception("worker %d failed", worker_id)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
