"""The command socket: sozuctl's requests, answered by the master and its workers (master only).

Theory of operation
-------------------
A unix stream socket (mode 0600) at `command_socket`, served by the master's selectors loop. Each
client has a Decoder and an outbox; reads and writes are non-blocking, so a client that stalls,
sends garbage or disconnects mid-message costs only its own connection. A message over the size
limit closes that connection; any other bad message gets an ERROR answer and changes nothing.

A request that changes the state (a PROXY request carrying a state order) is applied to the
master's ConfigState first: that is the validation, and a refused order reaches no worker. Then
it goes to every worker over its channel, and a Task collects their answers: the client gets OK
when all have applied it, ERROR naming the workers that refused or did not answer within
ctl_command_timeout. Queries (STATUS, METRICS, QUERY) are Tasks too, whose answer merges the
workers' data. A worker that refuses an order the master accepted is out of step with the state:
it is replaced by a fresh one, forked from the current state.

LOAD_STATE is a change like the others, whose orders are the difference between the running state
and the file's (ConfigState.diff). With automatic_state_save, saved_state is rewritten (atomically)
after every change, once its orders are on their way to the workers.
"""
from __future__ import annotations

import itertools
import logging
import os
import selectors
import socket
import stat
import time

from sozu import logs, tls
from sozu.messages import (STATE_ORDERS, TEST_ORDERS, Decoder, FrameTooLarge, MessageError, Order,
                           Request, answer, answer_id, encode, load_orders)
from sozu.metrics import aggregate
from sozu.upgrade import ENV_COMMAND_FD
from sozu.state import ConfigState, StateError, backend_health

log = logging.getLogger("sozu.command")

# A client that reads nothing of what it asked for is dropped when it asks for more past this;
# one answer, however large (the DUMP_STATE of a large state), is always sent whole.
MAX_OUTBOX = 16 << 20


class Client:
    def __init__(self, sock, max_size: int):
        self.sock = sock
        self.decoder = Decoder(max_size)
        self.outbox = bytearray()
        self.closed = False
        self.subscribed: str | None = None  # request id of SUBSCRIBE_EVENTS

    def send(self, answer: dict) -> None:
        if self.closed:
            return
        if len(self.outbox) > MAX_OUTBOX:
            self.closed = True
            return
        try:
            frame = encode(answer)
        except (TypeError, ValueError):  # not JSON (a NaN): a bug; the client is closed, not left waiting
            log.exception("an answer that cannot be encoded: the command client is closed")
            self.closed = True
            return
        self.outbox += frame
        self.flush()

    def flush(self) -> None:
        while self.outbox and not self.closed:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                return
            del self.outbox[:sent]


class _Callback:
    """A Task's client that is a function of the answer's data, not a command connection."""

    def __init__(self, on_done):
        self.on_done = on_done

    def send(self, answer: dict) -> None:
        self.on_done(answer.get("data") or {})


class _AfterAutosave:
    """A client whose answers wait for the automatic save of the change they answer."""

    def __init__(self, client, saver):
        self.client, self.saver = client, saver

    def send(self, answer: dict) -> None:
        self.saver.when_saved(lambda: self.client.send(answer))


class Task:
    """One request waiting for the workers' answers."""

    def __init__(self, client: Client, request_id: str, kind: str, pending: dict, deadline: float, finish):
        self.client = client
        self.request_id = request_id
        self.kind = kind
        self.pending = pending          # channel message id -> worker id
        self.answers: dict[int, dict] = {}
        self.deadline = deadline
        self.finish = finish            # finish(task, missing_worker_ids) -> answer dict

    def done(self, missing=()) -> None:
        self.client.send(self.finish(self, list(missing)))


class CommandServer:
    def __init__(self, config, sock: socket.socket):
        self.config = config
        self.path = config.command_socket
        self.sock = sock
        self.master = None
        self.selector = None
        self.clients: dict[int, Client] = {}
        self.tasks: dict[str, Task] = {}  # channel message id -> task
        self.ids = itertools.count()
        self.orders_applied = 0  # state orders applied by the master: a metric
        # provider -> its last PROVIDER_REPORT (the keys it refused), shown by LIST_WORKERS
        self.provider_reports: dict[str, dict] = {}

    # -- the socket --------------------------------------------------------------------------
    @classmethod
    def open(cls, config) -> "CommandServer":
        inherited = os.environ.pop(ENV_COMMAND_FD, None)
        if inherited:
            sock = socket.socket(fileno=int(inherited))
        else:
            sock = cls._bind(config.command_socket)
        sock.setblocking(False)
        sock.set_inheritable(True)
        return cls(config, sock)

    @staticmethod
    def _bind(path: str) -> socket.socket:
        """Every failure is one OSError whose text names the path (start-up prints it)."""
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                pass  # stale: left by a master that is gone; replaced below
            else:
                raise OSError(f"the command socket {path} is in use by a running sozu")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: the socket is the proxy's root shell
        try:
            if os.path.exists(path):
                os.unlink(path)
            sock.bind(path)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise OSError(f"cannot serve the command socket {path}: {error.strerror or error}") from None
        finally:
            os.umask(old_umask)
        return sock

    def attach(self, master) -> None:
        self.master = master

    def register(self, selector) -> None:
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close_in_child(self) -> None:
        for client in self.clients.values():
            client.sock.close()
        self.sock.close()

    def remove_socket_file(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            log.debug("command socket already removed")

    def _accept(self, mask) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                log.warning("command socket accept failed: %s", error)
                return
            sock.setblocking(False)
            client = Client(sock, self.config.max_command_message_size)
            self.clients[sock.fileno()] = client
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=client: self._on_client(c, m))

    def _on_client(self, client: Client, mask) -> None:
        if mask & selectors.EVENT_WRITE:
            client.flush()
        if mask & selectors.EVENT_READ:
            self._read(client)
        self._update_interest(client)

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            client.closed = True
            return
        try:
            messages = client.decoder.feed(data)
        except FrameTooLarge as error:
            for message in error.messages or []:
                self.handle(client, message)
            log.warning("command client sent a message over %d bytes: closing it", self.config.max_command_message_size)
            client.closed = True
            return
        for message in messages:
            self.handle(client, message)

    def _update_interest(self, client: Client) -> None:
        if client.closed:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        self.selector.modify(client.sock, events, self.selector.get_key(client.sock).data)

    def _drop(self, client: Client) -> None:
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            log.debug("command client already unregistered")
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    def flush_clients(self) -> None:
        for client in list(self.clients.values()):
            if client.outbox or client.closed:
                client.flush()
                self._update_interest(client)

    # -- requests ----------------------------------------------------------------------------
    def handle(self, client: Client, message) -> None:
        """The command edge: whatever happens, the client gets an answer and the master goes on."""
        request_id = answer_id(message)
        try:
            if isinstance(message, MessageError):
                raise message
            request = Request.from_json(message)
            request_id = request.id
            self.execute(client, request)
        except (MessageError, StateError, OSError) as error:
            client.send(answer(request_id, "ERROR", str(error)))
        except Exception as error:
            log.exception("command failed")
            client.send(answer(request_id, "ERROR", f"internal error: {error}"))

    def execute(self, client: Client, request: Request) -> None:
        kind = request.type
        master = self.master
        if kind == "PROXY":
            self.proxy(client, request, request.data)
        elif kind == "DUMP_STATE":
            client.send(answer(request.id, "OK", "", master.state.to_json()))
        elif kind == "SAVE_STATE":
            self.save_state(client, request)
        elif kind == "LOAD_STATE":
            self.load_state(client, request)
        elif kind == "LIST_WORKERS":
            client.send(answer(request.id, "OK", "", {"workers": self.list_workers(),
                                                        "backends": backend_health(master.state),
                                                        "providers": list(self.provider_reports.values())}))
        elif kind == "PROVIDER_REPORT":
            self.provider_reports[request.data["provider"]] = request.data
            client.send(answer(request.id, "OK", f"{len(request.data['refused'])} refused keys noted"))
        elif kind == "SUBSCRIBE_EVENTS":
            client.subscribed = request.id
            client.send(answer(request.id, "PROCESSING", "subscribed to events"))
        elif kind in ("UPGRADE_MASTER", "UPGRADE_WORKER"):
            self.upgrade(client, request)
        else:
            raise MessageError(f"unsupported request type {kind}")

    def proxy(self, client: Client, request: Request, order: Order) -> None:
        master = self.master
        if order.type in STATE_ORDERS:
            if request.worker_id is not None:
                # One state: a change that reached only some workers would split it silently.
                raise MessageError(f"{order.type} changes the state of the master and of every "
                                   "worker: worker_id is not allowed with it")
            if master.upgrade is not None:
                raise MessageError("an upgrade is in progress: the new master has its own copy of "
                                   "the state; retry this change once it answers")
            if not master.last_generation:
                raise MessageError("this master was replaced by an upgrade and is draining: "
                                   "send this change again, to the new master")
            tls.check_order(order)  # sozu.tls (#5): bad PEM, key mismatch, expired -> ERROR, no change
            try:
                self.apply_state_order(order)
            finally:
                master.close_retired_sockets()
            self.fan_out(self.autosave(client), request.id, [order], self._finish_state_change,
                         request.worker_id)
        elif order.type in ("SOFT_STOP", "HARD_STOP"):
            how = "soft" if order.type == "SOFT_STOP" else "hard"
            if request.worker_id is None:
                client.send(answer(request.id, "OK", f"{how} stop of the proxy started"))
                master.stop(how)
            else:
                master.stop_worker(request.worker_id, how)
                client.send(answer(request.id, "OK", f"{how} stop of worker {request.worker_id} started"))
        elif order.type == "LOGGING":
            try:
                logs.apply_filter(order.data)
            except logs.LogFilterError as error:
                raise MessageError(f"LOGGING: {error}") from None
            log.info("log filter set to %r", order.data)
            self.fan_out(client, request.id, [order], self._finish_state_change, request.worker_id)
        elif order.type == "METRICS":
            if order.data in ("ENABLE", "DISABLE"):  # and workers forked later start so
                master.metrics_enabled = order.data == "ENABLE"
            self.fan_out(client, request.id, [order], self._finish_metrics, request.worker_id)
        elif order.type == "QUERY":
            # The master's own answer is taken now: the workers answer after applying every
            # order sent before this one, that is from this very state.
            mine = self.master.query(order)
            self.fan_out(client, request.id, [order],
                         lambda task, missing: self._finish_query(task, missing, mine), request.worker_id)
        elif order.type == "STATUS":
            self.fan_out(client, request.id, [order], self._finish_status, request.worker_id)
        elif order.type in TEST_ORDERS:  # each worker's answer as it gave it
            self.fan_out(client, request.id, [order],
                         lambda task, missing: self._finish_query(task, missing, None), request.worker_id)
        else:
            raise MessageError(f"unsupported order {order.type}")

    def apply_state_order(self, order: Order) -> None:
        bound = None
        if order.type.startswith("ADD_") and order.type.endswith("_LISTENER"):
            # Bound before the state takes it (a port in use is refused), released again if
            # the state refuses it: a refused order leaves no socket behind.
            if order.data["front"] not in self.master.sockets:
                bound = order.data["front"]
            try:
                self.master.add_listener_socket(order.data["front"])
            except OSError as error:
                raise StateError(f"cannot listen on {order.data['front']}: "
                                 f"{error.strerror or error}") from None
        try:
            self.master.state.dispatch(order)
            self.orders_applied += 1
        except StateError:
            if bound is not None:
                self.master.close_listener_socket(bound)
            raise
        if order.type == "REMOVE_LISTENER":
            self.master.close_listener_socket(order.data["front"])

    def autosave(self, client: Client) -> "_AfterAutosave":
        """automatic_state_save: the saved state follows every change (sozu.state_saver), and
        the client's answer waits until the file holds it. A failure is only logged: the change
        is made, in the master and in the workers, and a file that could not be written must not
        split them."""
        self.master.saver.changed(self.master.state)
        return _AfterAutosave(client, self.master.saver)

    def fan_out(self, client: Client, request_id: str, orders: list[Order], finish, worker_id=None) -> None:
        workers = [w for w in self.master.workers.values() if w.state != "stopping"
                   and (worker_id is None or w.id == worker_id)]
        if worker_id is not None and not workers:
            raise MessageError(f"no running worker with id {worker_id}")
        deadline = time.monotonic() + self.config.ctl_command_timeout / 1000
        task = Task(client, request_id, orders[-1].type, {}, deadline, finish)
        for worker in workers:
            for order in orders:
                message_id = f"{request_id}#{next(self.ids)}"
                message = {"id": message_id, "type": "PROXY", "data": order.to_json()}
                fds = self.master.listener_fds(order)
                if fds:
                    message["fds"] = len(fds)
                if self.master.send_to_worker(worker, message, fds):
                    task.pending[message_id] = worker.id
                    self.tasks[message_id] = task
                else:  # dying: reaped and replaced from the current state, but it did not apply this
                    task.answers[worker.id] = {"status": "ERROR", "message": "its channel is closed"}
        if not task.pending:
            task.done()

    def on_worker_answer(self, worker, message: dict) -> None:
        task = self.tasks.pop(message.get("id"), None)
        if task is None:
            return  # late answer of an expired task: already reported
        task.pending.pop(message["id"], None)
        previous = task.answers.get(worker.id)
        if previous is None or previous.get("status") == "OK":
            task.answers[worker.id] = message
        if message.get("status") == "ERROR" and task.kind in STATE_ORDERS:
            log.error("worker %d refused %s (%s): replacing it with one forked from the current state",
                      worker.id, task.kind, message.get("message"))
            self.master.replace_worker(worker)
        if not task.pending:
            task.done()

    def worker_gone(self, worker) -> None:
        for message_id, task in list(self.tasks.items()):
            if task.pending.get(message_id) == worker.id:
                del self.tasks[message_id]
                del task.pending[message_id]
                task.answers[worker.id] = {"status": "ERROR", "message": "worker exited"}
                if not task.pending:
                    task.done()

    def expire(self, now: float) -> None:
        self.flush_clients()
        expired = {}
        for message_id, task in list(self.tasks.items()):
            if task.deadline <= now:
                del self.tasks[message_id]
                expired.setdefault(id(task), (task, []))[1].append(task.pending.pop(message_id))
        for task, missing in expired.values():
            if not task.pending:
                task.done(missing)

    # -- answers -----------------------------------------------------------------------------
    @staticmethod
    def _errors(task: Task, missing) -> list[str]:
        errors = [f"worker {wid}: {a.get('message')}" for wid, a in sorted(task.answers.items())
                  if a.get("status") != "OK"]
        errors += [f"worker {wid}: no answer within the command timeout" for wid in sorted(set(missing))]
        return errors

    def _finish_state_change(self, task: Task, missing) -> dict:
        errors = self._errors(task, missing)
        if errors:
            return answer(task.request_id, "ERROR", "; ".join(errors))
        return answer(task.request_id, "OK", f"{task.kind} applied by {len(task.answers)} workers")

    def collect_metrics(self, on_done) -> None:
        """The workers' metrics, merged as `sozuctl metrics` shows them, for on_done(data) once
        every worker answered or the command timeout passed (the Prometheus endpoint)."""
        self.fan_out(_Callback(on_done), f"metrics-{next(self.ids)}", [Order("METRICS", None)],
                     self._finish_metrics)

    def _finish_metrics(self, task: Task, missing) -> dict:
        workers = {str(wid): a.get("data") or {} for wid, a in task.answers.items() if a.get("status") == "OK"}
        data = {"workers": workers, "total": aggregate(workers)}
        errors = self._errors(task, missing)
        return answer(task.request_id, "ERROR" if errors else "OK", "; ".join(errors), data)

    def _finish_query(self, task: Task, missing, mine) -> dict:
        workers = {str(wid): a.get("data") for wid, a in task.answers.items() if a.get("status") == "OK"}
        data = {"workers": workers, "master": mine}
        errors = self._errors(task, missing)
        return answer(task.request_id, "ERROR" if errors else "OK", "; ".join(errors), data)

    def _finish_status(self, task: Task, missing) -> dict:
        data = {"workers": self.list_workers()}
        errors = self._errors(task, missing)
        return answer(task.request_id, "ERROR" if errors else "OK", "; ".join(errors), data)

    def list_workers(self) -> list[dict]:
        master = self.master
        rows = [{"id": "master", "pid": os.getpid(), "state": "stopping" if master.stopping else "running",
                 "restarts": 0, "generation": master.generation}]
        for worker in sorted(master.workers.values(), key=lambda w: (w.id, w.pid)):
            rows.append({"id": worker.id, "pid": worker.pid, "state": worker.state,
                         "restarts": worker.restarts, "generation": worker.generation})
        if not master.stopping:  # a slot waiting to be refilled (backing off) is shown too
            serving = {w.id for w in master.workers.values() if w.state != "stopping"}
            for slot in master.slots.values():
                if slot.wanted and slot.id not in serving:
                    rows.append({"id": slot.id, "pid": None, "state": "restarting",
                                 "restarts": slot.restarts, "generation": master.generation})
        return rows

    # -- state files -------------------------------------------------------------------------
    def save_state(self, client: Client, request: Request) -> None:
        """SAVE_STATE: written by a child (sozu.state_saver), answered once it is done."""
        path = request.data["path"]

        def done(error, orders):
            if error is None:
                client.send(answer(request.id, "OK", f"saved {orders} orders to {path}"))
            else:
                client.send(answer(request.id, "ERROR", error))
        self.master.saver.save(self.master.state, path, done)

    def load_state(self, client: Client, request: Request) -> None:
        """Apply the difference between the running state and the file's, as one fan-out. An
        order of the difference that the master refuses (a port now in use) stops the load:
        the orders before it are applied everywhere, and the answer says where it stopped."""
        path = request.data["path"]
        if self.master.upgrade is not None:
            raise MessageError("an upgrade is in progress: the new master has its own copy of the "
                               "state; load the file again once it answers")
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as error:
            raise MessageError(f"cannot read the state file {path}: {error.strerror or error}") from None
        try:
            target = ConfigState.from_orders(load_orders(data))
        except (MessageError, StateError) as error:
            raise MessageError(f"{path}: {error}") from None
        orders = self.master.state.diff(target)
        if not orders:
            client.send(answer(request.id, "OK", f"the state is already the one in {path}"))
            return
        applied, failure = [], None
        for order in orders:
            try:
                tls.check_order(order)  # as for a single order: what no worker could serve
                self.apply_state_order(order)
            except StateError as error:
                failure = f"order {len(applied) + 1} of {len(orders)} ({order.type}) was refused: {error}"
                break
            applied.append(order)
        self.master.close_retired_sockets()
        if not applied:
            raise MessageError(f"{path}: {failure}; nothing was changed")

        def finish(task: Task, missing) -> dict:
            errors = self._errors(task, missing)
            if failure is not None:
                errors.insert(0, f"{path}: {failure}; the {len(applied)} orders before it were applied")
            if errors:
                return answer(task.request_id, "ERROR", "; ".join(errors))
            return answer(task.request_id, "OK", f"loaded {path}: {len(applied)} orders (the "
                                                  f"difference) applied by {len(task.answers)} workers")

        self.fan_out(self.autosave(client), request.id, applied, finish)

    # -- events ------------------------------------------------------------------------------
    def publish_event(self, worker_id: int, data) -> None:
        if not isinstance(data, dict):
            return
        event = dict(data, worker_id=worker_id)
        for client in self.clients.values():
            if client.subscribed is not None:
                client.send(answer(client.subscribed, "PROCESSING", data.get("kind", ""), event))

    # -- upgrades ----------------------------------------------------------------------------
    def upgrade(self, client: Client, request: Request) -> None:
        def done(error, pid):
            if error:
                client.send(answer(request.id, "ERROR", f"upgrade failed: {error}"))
            elif request.type == "UPGRADE_MASTER":
                client.send(answer(request.id, "OK", f"upgraded: master {pid} serves, the previous generation drains",
                                    {"pid": pid}))
            else:
                client.send(answer(request.id, "OK", f"worker {request.data} upgraded"))

        if request.type == "UPGRADE_MASTER":
            self.master.start_upgrade(done)
            client.send(answer(request.id, "PROCESSING", "starting a new master"))
        else:
            self.master.upgrade_worker(request.data, lambda error: done(error, None))
            client.send(answer(request.id, "PROCESSING", f"starting a new worker {request.data}"))

    def start_upgrade(self, client) -> None:
        """SIGUSR2: an upgrade nobody waits on; the log says how it went."""
        def done(error, pid):
            if error:
                log.error("upgrade failed: %s", error)
        try:
            self.master.start_upgrade(done)
        except MessageError as error:
            log.error("upgrade refused: %s", error)

    def stop_accepting(self) -> None:
        """A newer master serves the command socket now; clients already here are still answered."""
        if self.selector is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                log.debug("command socket already unregistered")
        self.sock.close()
