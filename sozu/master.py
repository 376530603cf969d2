"""The master process: holds the state, supervises the workers, serves the command socket.

Theory of operation
-------------------
The master never touches client traffic and never imports gevent. It runs one selectors loop that
reads like a list of verbs (gunicorn's arbiter): each turn it serves the sockets that are ready
(worker channels, the command socket and its clients), handles the signals queued since the last
turn, reaps dead workers, starts the ones missing, and expires orders whose workers did not
answer in time.

Signal handlers only append to a queue and wake the loop through a pipe (signal.set_wakeup_fd);
all the work, logging included, happens in the loop.

A worker is forked (no exec) from the master's current memory, so it starts with the current
state. A worker that dies is replaced at once, unless it died right after boot several times in a
row: then its replacement waits, doubling each time up to a minute, and the reason is logged.

The active health checks (sozu.health.checker) run in this loop too, without blocking it: each
turn gives them a tick, and the loop sleeps no longer than their next deadline. A verdict that
changes a backend's state is an order like any other: applied to the master's state, then sent
to every worker.

An order from the command socket is applied to the master's state first (which validates it),
then sent to every running worker; the answer to the client waits for all of them, bounded by
ctl_command_timeout. The command socket (sozu.command_socket) and the dispatcher of its requests
(sozu.commands) use the master through its verbs only; the fan-out to the workers and the
gathering of their answers is sozu.fanout (docs/architecture.md).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from sozu import pid_file, seccomp, systemd, tls
from sozu.capacity import LoadBoard
from sozu.channel import ChannelClosed, MasterChannel
from sozu.commands import Commands
from sozu.fanout import Fanout
from sozu.health.checker import HealthChecker
from sozu.listeners import ListenerSockets
from sozu.messages import MessageError, Order
from sozu.metrics import worker_metrics
from sozu.metrics_server import MetricsServer, listening_socket
from sozu.prometheus import render as render_prometheus
from sozu.provider.child import ProviderChild
from sozu.state import StateError, answer_query, backend_health
from sozu.state_saver import StateSaver
from sozu.statsd import StatsdSender
from sozu.upgrade import Upgrade, signal_ready

log = logging.getLogger("sozu.master")

# Exit codes a worker may end with, as the master reads them.
WORKER_BOOT_FAILED = 2
WORKER_SANDBOX_FAILED = 3
BOOT_FAILURE_WINDOW = 5.0  # s: a worker dying sooner than this after its start "failed to boot"
MAX_BACKOFF = 60.0


@dataclass
class WorkerProcess:
    id: int
    pid: int
    channel: MasterChannel
    generation: int
    started: float = field(default_factory=time.monotonic)
    state: str = "booting"  # booting | running | stopping
    restarts: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    replaces: "WorkerProcess | None" = None  # upgrade --worker: stopped once this one serves
    on_ready: object = None                 # called with (error or None) when it serves or dies


@dataclass
class Slot:
    """A worker id the master keeps filled, with its history."""
    id: int
    restarts: int = 0
    boot_failures: int = 0
    not_before: float = 0.0
    wanted: bool = True


class Master:
    """The verbs the rest of the master's side uses (the command dispatcher, the health checks,
    start-up) are the public methods below, from apply to upgrade_worker; its attributes are its
    own (docs/architecture.md, "The master's verbs")."""

    def __init__(self, config, state, listeners: ListenerSockets, command_socket,
                 generation: int = 0, sandbox_plan=None, ready_fd: int | None = None):
        self.config = config
        self.state = state
        self.listeners = listeners
        self.generation = generation
        self.sandbox_plan = sandbox_plan
        self.selector = selectors.DefaultSelector()
        self.processes: dict[int, WorkerProcess] = {}  # the workers, by pid
        self.slots = {i: Slot(i) for i in range(config.worker_count)}
        self.load_board = LoadBoard(config.worker_count)
        self.signals: list[int] = []
        self.stopping: str | None = None  # None | "soft" | "hard"
        self.stop_deadline = 0.0
        self.command_socket = command_socket
        self.commands = Commands(self)
        self.fanout = Fanout(self.send_to_worker, self._refused)
        self.orders_applied = 0  # state orders applied by the master: a metric
        # provider -> its last PROVIDER_REPORT (the keys it refused), shown by LIST_WORKERS
        self._provider_reports: dict[str, dict] = {}
        self.exit_code = 0
        # Whether this master owns the socket and pid files (and removes them when it exits):
        # a master started by an upgrade owns them once it serves; a master retired by a newer
        # one no longer does.
        self.last_generation = ready_fd is None
        self.upgrade = None          # the Upgrade in progress, if any
        self.ready_fd = ready_fd     # set when an older master waits for us to serve
        self.told_ready = False      # READY=1 sent to systemd (sozu/systemd.py)
        self.last_ping = 0.0
        self.health = HealthChecker(self.selector, self.apply_health)
        self._health_ids = itertools.count()
        self.health_changes = 0
        self.worker_upgrades = 0
        self.saver = StateSaver(config.saved_state if config.automatic_state_save else None)
        self.metrics_enabled = True  # METRICS ENABLE | DISABLE: workers forked later count so too
        self.metrics_server: MetricsServer | None = None
        self.statsd: StatsdSender | None = None
        # [provider.etcd]: a child the master keeps alive (sozu/provider/child.py)
        self.provider = ProviderChild(config.path) if config.provider.etcd is not None else None
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)

    # -- the verbs -----------------------------------------------------------------------------
    def apply(self, orders: list[Order]) -> tuple[list[Order], StateError | None]:
        """Apply state orders to the master's state, in order, until one is refused: (the orders
        applied, the refusal or None). What no worker could serve (a bad certificate) is refused
        here, before any state changes. MessageError when no change may be made now."""
        if self.upgrade is not None:
            raise MessageError("an upgrade is in progress: the new master has its own copy of "
                               "the state; send this change again once it answers")
        if not self.last_generation:
            raise MessageError("this master was replaced by an upgrade and is draining: "
                               "send this change again, to the new master")
        applied: list[Order] = []
        try:
            for order in orders:
                try:
                    tls.check_order(order)
                    self._apply_one(order)
                except StateError as error:
                    return applied, error
                applied.append(order)
            return applied, None
        finally:
            self.listeners.close_retired()
            if applied:
                self.saver.changed(self.state)

    def broadcast(self, orders: list[Order], on_done, worker_id: int | None = None,
                  request_id: str = "") -> None:
        """The orders to every running worker (or to worker_id's); on_done(answers by worker id,
        ids of the workers that did not answer in time) within ctl_command_timeout."""
        targets = [w for w in self.processes.values() if w.state != "stopping"
                   and (worker_id is None or w.id == worker_id)]
        if worker_id is not None and not targets:
            raise MessageError(f"no running worker with id {worker_id}")
        self.fanout.broadcast(targets, orders, self.config.ctl_command_timeout / 1000, on_done,
                              self.listeners.fds_for, request_id)

    def workers(self) -> list[dict]:
        """The master and its workers as LIST_WORKERS and STATUS show them."""
        rows = [{"id": "master", "pid": os.getpid(), "state": "stopping" if self.stopping else "running",
                 "restarts": 0, "generation": self.generation}]
        for worker in sorted(self.processes.values(), key=lambda w: (w.id, w.pid)):
            rows.append({"id": worker.id, "pid": worker.pid, "state": worker.state,
                         "restarts": worker.restarts, "generation": worker.generation})
        if not self.stopping:  # a slot waiting to be refilled (backing off) is shown too
            serving = {w.id for w in self.processes.values() if w.state != "stopping"}
            for slot in self.slots.values():
                if slot.wanted and slot.id not in serving:
                    rows.append({"id": slot.id, "pid": None, "state": "restarting",
                                 "restarts": slot.restarts, "generation": self.generation})
        return rows

    def note_provider_report(self, report: dict) -> None:
        """PROVIDER_REPORT: the keys a provider refused (docs/etcd.md), until its next report."""
        self._provider_reports[report["provider"]] = report

    def provider_reports(self) -> list[dict]:
        return list(self._provider_reports.values())

    def dump_state(self) -> dict:
        return self.state.to_json()

    def difference(self, target) -> list[Order]:
        """The orders that make the running state `target` (LOAD_STATE)."""
        return self.state.diff(target)

    def backend_health(self) -> list[dict]:
        return backend_health(self.state)

    def save_state(self, path: str, on_done) -> None:
        """The running state to `path`, off the loop (sozu.state_saver); on_done(error, orders)."""
        self.saver.save(self.state, path, on_done)

    def when_saved(self, callback) -> None:
        """callback() once the automatic state save holds every change applied so far."""
        self.saver.when_saved(callback)

    def count_metrics(self, enabled: bool) -> None:
        """METRICS ENABLE | DISABLE: remembered for the workers forked later (the running ones
        get the order itself)."""
        self.metrics_enabled = enabled

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.last_generation:  # the files are ours: a retired generation leaves them
                self.command_socket.remove_socket_file()
                pid_file.remove(self.config.pid_file_path)
            log.info("master %d exits", os.getpid())

    def _run(self) -> int:
        self.install_signal_handlers()
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)
        if self.ready_fd is None:
            # A master started by an upgrade leaves the shared command socket to the old one
            # until it serves (take_over): a change it accepted before then would be lost if the
            # upgrade failed, and a second upgrade must reach the master that refuses it.
            self.command_socket.serve(self.selector, self.commands.handle)
        log.info("master %d starting %d workers (generation %d)", os.getpid(), len(self.slots), self.generation)
        self.serve_metrics()
        while True:
            try:
                self.handle_signals()
                self.reap_workers()
                if self.stopping:
                    if self.finish_stop():
                        return self.exit_code
                else:
                    self.manage_workers()
                self.serve_ready_sockets(timeout=self.health.tick(self.state, time.monotonic()))
                now = time.monotonic()
                self.command_socket.flush_clients()
                self.fanout.expire(now)
                if self.upgrade is not None:
                    self.upgrade.check(now)
                if self.metrics_server is not None:
                    self.metrics_server.expire(now)
                if self.statsd is not None:
                    self.statsd.tick(now)
                self.check_heartbeats(now)
                if self.provider is not None and self.ready_fd is None and not self.stopping:
                    self.provider.tick(now)  # once this master serves the command socket
            except Exception:  # the master loop edge: log, keep supervising
                log.exception("error in the master loop; continuing")
                time.sleep(0.1)

    def serve_ready_sockets(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        for worker in list(self.processes.values()):
            if worker.channel.wants_write:
                self._flush(worker)
            self._watch_channel(worker)

    def _watch_channel(self, worker: WorkerProcess) -> None:
        """Watch a channel for room to write while it has bytes queued: an order larger than the
        socket's buffer goes out as fast as the worker reads it, not one buffer per loop turn."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.channel.wants_write else 0)
        try:
            key = self.selector.get_key(worker.channel.sock)
        except (KeyError, ValueError):  # its channel is closed: reaping will follow
            return
        if key.events != events:
            self.selector.modify(worker.channel.sock, events, key.data)

    # -- signals -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR2,
                       signal.SIGHUP):
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum, frame) -> None:
        self.signals.append(signum)  # nothing else here: the loop does the work

    def _drain_wakeup(self, mask) -> None:
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            return

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGTERM:
                self.stop("soft")
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self.stop("hard")
            elif signum == signal.SIGUSR2:
                self.upgrade_on_signal()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP ignored: send changes through the command socket (sozuctl)")

    # -- workers -----------------------------------------------------------------------------
    def manage_workers(self) -> None:
        now = time.monotonic()
        running = {w.id for w in self.processes.values() if w.state != "stopping"}
        for slot in self.slots.values():
            if slot.wanted and slot.id not in running and now >= slot.not_before:
                self.spawn_worker(slot)

    def spawn_worker(self, slot: Slot) -> WorkerProcess | None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as error:
            log.error("cannot fork worker %d: %s", slot.id, error)
            parent_end.close()
            child_end.close()
            slot.not_before = time.monotonic() + 1.0
            return None
        if pid == 0:  # the worker: never returns into the master's code
            try:
                parent_end.close()
                self._close_in_child()
                from sozu import worker  # gevent is imported only here, after fork
                worker.main(slot.id, self.config, self.state, self.listeners.for_worker(slot.id), child_end,
                            self.sandbox_plan,
                            self.load_board, self.metrics_enabled)
            finally:
                log.exception("worker %d could not start", slot.id)
                os._exit(WORKER_BOOT_FAILED)
        child_end.close()
        channel = MasterChannel(parent_end, self.config.max_command_message_size)
        process = WorkerProcess(slot.id, pid, channel, self.generation, restarts=slot.restarts)
        self.processes[pid] = process
        self.selector.register(parent_end, selectors.EVENT_READ, lambda mask, p=process: self._on_channel(p))
        log.info("worker %d started, pid %d", slot.id, pid)
        return process

    def _close_in_child(self) -> None:
        """What a worker must not hold: the other workers' channels, the command socket, the
        master's selector and wake-up pipe."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR2,
                       signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        for worker in self.processes.values():
            worker.channel.close()
        self.command_socket.close_in_child()
        self.health.close_in_child()
        self.saver.close_in_child()
        if self.metrics_server is not None:
            self.metrics_server.close_in_child()
        if self.statsd is not None:
            self.statsd.close()
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self.ready_fd is not None:  # or the old master could never see it closed
            os.close(self.ready_fd)

    def _on_channel(self, worker: WorkerProcess) -> None:
        try:
            messages = worker.channel.receive()
        except ChannelClosed:
            self.selector_unregister(worker.channel.sock)
            worker.channel.close()
            return
        worker.last_seen = time.monotonic()
        for message in messages:
            self.on_worker_message(worker, message)

    def on_worker_message(self, worker: WorkerProcess, message) -> None:
        if not isinstance(message, dict):
            log.error("bad message from worker %d: %s", worker.id, message)
            return
        kind = message.get("type")
        if kind == "READY":
            self.worker_ready(worker)
        elif kind == "EVENT":
            self.command_socket.publish_event(worker.id, message.get("data"))
        elif "status" in message:
            self.fanout.on_answer(worker, message)

    def worker_ready(self, worker: WorkerProcess) -> None:
        if worker.state == "booting":
            worker.state = "running"
        slot = self.slots.get(worker.id)
        if slot is not None:
            slot.boot_failures = 0
        log.debug("worker %d ready", worker.id)
        if worker.replaces is not None:
            old, worker.replaces = worker.replaces, None
            if old.pid in self.processes and old.state != "stopping":
                old.state = "stopping"
                self._kill(old.pid, signal.SIGTERM)
        if worker.on_ready is not None:
            callback, worker.on_ready = worker.on_ready, None
            callback(None)
        if self.ready_fd is not None and self.all_workers_serve():
            self.take_over()
        elif not self.told_ready and self.ready_fd is None and self.all_workers_serve():
            self.told_ready = systemd.notify("READY=1")

    def take_over(self) -> None:
        """Started by an upgrade, all our workers serve: the files and the command socket are
        ours now, and the previous generation may stop."""
        pid_file.write(self.config.pid_file_path)
        # Before the old master may exit: systemd must know its new main process by then.
        self.told_ready = systemd.notify(f"MAINPID={os.getpid()}", "READY=1")
        self.last_generation = True
        self.command_socket.serve(self.selector, self.commands.handle)
        signal_ready(self.ready_fd)
        self.ready_fd = None
        if self.metrics_server is not None:
            # After the old master is told: scrapes wait in the shared backlog meanwhile, and
            # none reads the old generation's figures after the new one's.
            self.metrics_server.serve()
        log.info("all workers serve: the previous generation may stop")

    def all_workers_serve(self) -> bool:
        serving = {w.id for w in self.processes.values() if w.state == "running"}
        return all(slot.id in serving for slot in self.slots.values() if slot.wanted)

    def send_to_worker(self, worker: WorkerProcess, message: dict, fds=()) -> bool:
        try:
            worker.channel.send(message, fds)
            return True
        except ChannelClosed as error:
            log.warning("worker %d unreachable: %s", worker.id, error)
            return False

    def _flush(self, worker: WorkerProcess) -> None:
        try:
            worker.channel.flush()
        except ChannelClosed:
            log.debug("worker %d channel closed while flushing", worker.id)

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            worker = self.processes.pop(pid, None)
            if worker is None:
                if self.provider is not None and self.provider.exited(pid, status):
                    continue
                if self.saver.child_exited(pid, _describe_exit(status)):
                    continue
                if self.upgrade is not None:
                    self.upgrade.child_exited(pid, _describe_exit(status))
                continue
            self.selector_unregister(worker.channel.sock)
            worker.channel.close()
            self.worker_exited(worker, status)

    def worker_exited(self, worker: WorkerProcess, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = _describe_exit(status)
        if not any(w.id == worker.id for w in self.processes.values()):
            self.load_board.clear(worker.id)
        self.fanout.worker_gone(worker)
        if worker.on_ready is not None:
            worker.on_ready(f"the new worker exited before serving ({how})")
            worker.on_ready = None
        slot = self.slots.get(worker.id)
        expected = self.stopping or worker.state == "stopping" or slot is None or not slot.wanted
        if expected:
            log.info("worker %d (pid %d) exited: %s", worker.id, worker.pid, how)
            return
        if seccomp.violation(status):
            log.error("worker %d (pid %d) sandbox violation: its seccomp filter killed it for a "
                      "system call off the allow-list (the kernel log names the call)",
                      worker.id, worker.pid)
        else:
            log.error("worker %d (pid %d) died: %s", worker.id, worker.pid, how)
        if not self.config.worker_automatic_restart:
            slot.wanted = False
            return
        slot.restarts += 1
        lifetime = time.monotonic() - worker.started
        if worker.state == "booting" or lifetime < BOOT_FAILURE_WINDOW or code == WORKER_SANDBOX_FAILED:
            slot.boot_failures += 1
        else:
            slot.boot_failures = 0
        if slot.boot_failures >= 2:
            delay = min(MAX_BACKOFF, 0.5 * 2 ** (slot.boot_failures - 1))
            slot.not_before = time.monotonic() + delay
            reason = "its sandbox could not be applied" if code == WORKER_SANDBOX_FAILED else "it keeps dying at boot"
            log.error("worker %d: %s (%d times in a row); next start in %.1fs", worker.id, reason,
                      slot.boot_failures, delay)

    def stop_worker(self, worker_id: int, how: str) -> None:
        """Stop one worker for good: its slot is not refilled."""
        slot = self.slots.get(worker_id)
        targets = [w for w in self.processes.values() if w.id == worker_id and w.state != "stopping"]
        if slot is None or not targets:
            raise MessageError(f"no running worker with id {worker_id}")
        slot.wanted = False
        for worker in targets:
            worker.state = "stopping"
            self._kill(worker.pid, signal.SIGTERM if how == "soft" else signal.SIGINT)

    def _refused(self, worker: WorkerProcess, kind: str, message: dict) -> None:
        """A worker refused a change the master's state took: it is out of step with it."""
        log.error("worker %d refused %s (%s): replacing it with one forked from the current state",
                  worker.id, kind, message.get("message"))
        self.replace_worker(worker)

    def replace_worker(self, worker: WorkerProcess) -> None:
        """A fresh worker, forked from the current state, replaces one that drains and exits."""
        if worker.state == "stopping" or self.stopping:
            return
        worker.state = "stopping"
        self._kill(worker.pid, signal.SIGTERM)
        slot = self.slots.get(worker.id)
        if slot is not None and slot.wanted:
            slot.restarts += 1
            self.spawn_worker(slot)

    def check_heartbeats(self, now: float) -> None:
        """A worker that answers nothing for worker_heartbeat_timeout is stuck: replace it."""
        timeout = self.config.worker_heartbeat_timeout
        if now - self.last_ping >= timeout / 3:
            self.last_ping = now
            for worker in list(self.processes.values()):
                if worker.state != "stopping":
                    self.send_to_worker(worker, {"id": "ping", "type": "PING"})
        for worker in list(self.processes.values()):
            if worker.state != "stopping" and now - worker.last_seen > timeout:
                log.error("worker %d (pid %d) missed its heartbeat for %ds: killing it",
                          worker.id, worker.pid, timeout)
                self._kill(worker.pid, signal.SIGKILL)
                worker.last_seen = now  # killed once; reaping does the rest

    # -- upgrades ----------------------------------------------------------------------------
    def start_upgrade(self, on_done) -> None:
        """Re-execute the master (sozu.upgrade); on_done(error, new_pid) when it is decided."""
        if self.upgrade is not None:
            raise MessageError("an upgrade is already in progress")
        if self.stopping:
            raise MessageError("the proxy is stopping")
        if self.ready_fd is not None or not self.last_generation:
            raise MessageError("this master is not the one serving: it is itself part of an upgrade")
        if self.saver.busy:  # its file must not land over one the new master writes later
            raise MessageError("a state file is being written: upgrade again once it is")

        def done(error, pid):
            self.upgrade = None
            if error is None:
                self.retire(pid)
            on_done(error, pid)

        sockets_env = self.listeners.handover()
        if self.metrics_server is not None:
            sockets_env.update(self.metrics_server.handover())
        upgrade = Upgrade(self.state, sockets_env, self.command_socket.sock, self.generation + 1,
                          self.selector_unregister, done)
        upgrade.start()
        self.upgrade = upgrade
        self.selector.register(upgrade.ready_fd, selectors.EVENT_READ, lambda mask: upgrade.on_readable())

    def upgrade_on_signal(self) -> None:
        """SIGUSR2: an upgrade nobody waits on; the log says how it went."""
        def done(error, pid):
            if error:
                log.error("upgrade failed: %s", error)
        try:
            self.start_upgrade(done)
        except MessageError as error:
            log.error("upgrade refused: %s", error)

    def retire(self, new_pid: int) -> None:
        """A newer master serves: this generation drains and exits, leaving it the files."""
        log.info("upgrade: master %d (generation %d) serves; this generation drains and exits",
                 new_pid, self.generation + 1)
        self.last_generation = False
        self.command_socket.stop_accepting()
        if self.metrics_server is not None:
            self.metrics_server.stop_accepting()
        self.stop("soft")

    def upgrade_worker(self, worker_id: int, on_done) -> None:
        """A new process for one worker slot; the old one drains once the new one serves."""
        slot = self.slots.get(worker_id)
        olds = [w for w in self.processes.values() if w.id == worker_id and w.state != "stopping"]
        if slot is None or not olds:
            raise MessageError(f"no running worker with id {worker_id}")
        if any(w.replaces is not None for w in self.processes.values() if w.id == worker_id):
            raise MessageError(f"worker {worker_id} is already being upgraded")
        new = self.spawn_worker(slot)
        if new is None:
            raise MessageError(f"could not fork a new worker {worker_id}")
        slot.restarts += 1
        self.worker_upgrades += 1
        new.restarts = slot.restarts
        new.replaces = olds[0]
        new.on_ready = on_done

    def selector_unregister(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            log.debug("%s was not registered", fileobj)

    def _apply_one(self, order: Order) -> None:
        """One state order, with the listening socket it binds or retires (sozu.listeners)."""
        try:
            bound = self.listeners.before(order, self.state.listeners)
        except OSError as error:
            raise StateError(f"cannot listen on {order.data['front']}: {error.strerror or error}") from None
        try:
            self.state.dispatch(order)
        except StateError:
            if bound is not None:  # a refused order leaves no socket behind
                self.listeners.retire(bound)
            raise
        self.orders_applied += 1
        self.listeners.after(order)

    def query(self, order):
        """The master's own answer to a QUERY order, in the workers' shape, so that an operator
        can compare them (sozuctl query applications); for BACKENDS, with what the health
        checker counts."""
        answer = answer_query(self.state, order.data)
        if order.data.get("type") == "BACKENDS":
            targets = self.health.targets
            for row in answer:
                target = targets.get((row["app_id"], row["backend_id"], row["address"]))
                if target is not None:
                    row["check"] = target.view()
        return answer

    def apply_health(self, order) -> None:
        """A health verdict (SET_BACKEND_HEALTH): into the state, then to every worker. The
        workers' answers come back without a waiting task, and are dropped."""
        try:
            self.state.dispatch(order)
        except StateError as error:  # the backend went away while its check ran
            log.debug("health verdict dropped: %s", error)
            return
        self.health_changes += 1
        message = {"id": f"health-{next(self._health_ids)}", "type": "PROXY", "data": order.to_json()}
        for worker in list(self.processes.values()):
            if worker.state != "stopping":
                self.send_to_worker(worker, message)

    # -- metrics -----------------------------------------------------------------------------
    def serve_metrics(self) -> None:
        """The Prometheus endpoint and the statsd sender, when configured. A monitoring port
        that cannot be bound is logged, and the proxy serves without it."""
        metrics = self.config.metrics
        address = metrics.prometheus
        if metrics.address is not None:
            self.statsd = StatsdSender(metrics.address, metrics.prefix, metrics.tagged_metrics,
                                       metrics.flush_interval, self.collect_metrics)
        try:
            sock = listening_socket(address)  # the previous master's, after an upgrade
        except OSError as error:
            log.error("cannot serve Prometheus metrics on %s: %s", address, error.strerror or error)
            return
        if sock is None:
            return
        self.metrics_server = MetricsServer(address, sock, self.selector, self.collect_metrics,
                                            lambda figures: render_prometheus(*figures))
        if self.ready_fd is None:  # else from take_over: the old master answers until then
            self.metrics_server.serve()

    def collect_metrics(self, on_done) -> None:
        """on_done((the workers' merged snapshot, the master's own figures)) once every worker
        answered or the command timeout passed (the Prometheus endpoint, statsd)."""
        self.broadcast([Order("METRICS", None)], lambda answers, missing: on_done(
            (worker_metrics(answers)["total"], self.figures())), request_id="metrics")

    def figures(self) -> dict:
        """What the master itself counts: workers, upgrades, orders, backend health."""
        by_state: dict[str, int] = {}
        for worker in self.processes.values():
            by_state[worker.state] = by_state.get(worker.state, 0) + 1
        return {"workers_by_state": by_state,
                "worker_restarts": sum(slot.restarts for slot in self.slots.values()),
                "worker_upgrades": self.worker_upgrades,
                "orders_applied": self.orders_applied,
                "health_changes": self.health_changes,
                "generation": self.generation,
                "backends": answer_query(self.state, {"type": "BACKENDS"})}

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, how: str) -> None:
        if self.stopping == "hard" or self.stopping == how:
            return
        self.stopping = how
        if self.provider is not None:  # a newer generation runs its own
            self.provider.stop()
        if self.last_generation:  # a retired generation's stop is no stop of the service
            systemd.notify("STOPPING=1")
        if self.upgrade is not None:  # stopping wins: a new master would find its files removed
            self.upgrade.fail(f"a {how} stop of the proxy was asked meanwhile")
        grace = self.config.shutdown_grace_period
        self.stop_deadline = time.monotonic() + (grace + 2 if how == "soft" else 2)
        log.info("%s stop of %d workers", how, len(self.processes))
        sig = signal.SIGTERM if how == "soft" else signal.SIGINT
        for worker in self.processes.values():
            worker.state = "stopping"
            self._kill(worker.pid, sig)
        self.listeners.close_all()

    def finish_stop(self) -> bool:
        if not self.processes:  # and a state file being written is waited for, within the deadline
            return not self.saver.busy or time.monotonic() > self.stop_deadline
        if time.monotonic() > self.stop_deadline:
            for worker in self.processes.values():
                log.warning("worker %d (pid %d) did not stop in time: killing it", worker.id, worker.pid)
                self._kill(worker.pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5
        return False

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            log.debug("process %d already gone", pid)


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
