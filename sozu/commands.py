"""The command dispatcher: each request of the command socket, carried out through the master's
verbs and answered (master only).

Theory of operation
-------------------
The command socket (sozu.command_socket) hands every message it decodes to handle(); this is
one of the edges where errors are caught (docs/architecture.md, "Errors"): whatever a request
does, its client gets an answer and the master goes on.

A request that changes the state (a PROXY request carrying a state order, LOAD_STATE) is first
applied to the master's state (Master.apply): that is the validation, and a refused order reaches
no worker. Then it is broadcast to every worker (Master.broadcast, sozu.fanout), and the client
gets OK once all have applied it and, with automatic_state_save, once the state file holds it;
ERROR naming the workers that refused or did not answer within ctl_command_timeout. Queries
(STATUS, METRICS, QUERY) are broadcasts too, whose answer merges the workers' data.

LOAD_STATE is a change like the others, whose orders are the difference between the running
state and the file's (ConfigState.diff), broadcast as one.

This module knows the protocol's answers (docs/orders.md) and nothing of how the master keeps
its workers, listeners or files: it only calls the verbs of the master it was given.
"""
from __future__ import annotations

import logging

from sozu import logs
from sozu.messages import STATE_ORDERS, TEST_ORDERS, MessageError, Order, Request, answer, answer_id, load_orders
from sozu.metrics import worker_metrics
from sozu.state import ConfigState, StateError

log = logging.getLogger("sozu.command")


class Commands:
    def __init__(self, master):
        self.master = master

    def handle(self, client, message) -> None:
        """The command dispatcher edge: whatever happens, the client gets an answer and the
        master goes on."""
        request_id = answer_id(message)
        try:
            if isinstance(message, MessageError):
                raise message
            request = Request.from_json(message)
            request_id = request.id
            self.execute(client, request)
        except (MessageError, StateError, OSError) as error:
            client.send(answer(request_id, "ERROR", str(error)))
        except Exception as error:  # the command dispatcher edge: a bug ends this request only
            log.exception("command failed")
            client.send(answer(request_id, "ERROR", f"internal error: {error}"))

    def execute(self, client, request: Request) -> None:
        kind = request.type
        master = self.master
        if kind == "PROXY":
            self.proxy(client, request, request.data)
        elif kind == "DUMP_STATE":
            client.send(answer(request.id, "OK", "", master.dump_state()))
        elif kind == "SAVE_STATE":
            self.save_state(client, request)
        elif kind == "LOAD_STATE":
            self.load_state(client, request)
        elif kind == "LIST_WORKERS":
            client.send(answer(request.id, "OK", "", {"workers": master.workers(),
                                                       "backends": master.backend_health(),
                                                       "providers": master.provider_reports()}))
        elif kind == "PROVIDER_REPORT":
            master.note_provider_report(request.data)
            client.send(answer(request.id, "OK", f"{len(request.data['refused'])} refused keys noted"))
        elif kind == "SUBSCRIBE_EVENTS":
            client.subscribed = request.id
            client.send(answer(request.id, "PROCESSING", "subscribed to events"))
        elif kind in ("UPGRADE_MASTER", "UPGRADE_WORKER"):
            self.upgrade(client, request)
        else:
            raise MessageError(f"unsupported request type {kind}")

    def proxy(self, client, request: Request, order: Order) -> None:
        master, rid, worker_id = self.master, request.id, request.worker_id
        if order.type in STATE_ORDERS:
            if worker_id is not None:
                # One state: a change that reached only some workers would split it silently.
                raise MessageError(f"{order.type} changes the state of the master and of every "
                                   "worker: worker_id is not allowed with it")
            applied, refusal = master.apply([order])
            if refusal is not None:
                raise refusal
            master.broadcast(applied, self._after_save(client, lambda answers, missing:
                                                       _state_changed(rid, order.type, answers, missing)),
                             request_id=rid)
        elif order.type in ("SOFT_STOP", "HARD_STOP"):
            how = "soft" if order.type == "SOFT_STOP" else "hard"
            if worker_id is None:
                client.send(answer(rid, "OK", f"{how} stop of the proxy started"))
                master.stop(how)
            else:
                master.stop_worker(worker_id, how)
                client.send(answer(rid, "OK", f"{how} stop of worker {worker_id} started"))
        elif order.type == "LOGGING":
            try:
                logs.apply_filter(order.data)
            except logs.LogFilterError as error:
                raise MessageError(f"LOGGING: {error}") from None
            log.info("log filter set to %r", order.data)
            master.broadcast([order], lambda answers, missing: client.send(
                _state_changed(rid, order.type, answers, missing)), worker_id, rid)
        elif order.type == "METRICS":
            if order.data in ("ENABLE", "DISABLE"):
                master.count_metrics(order.data == "ENABLE")
            master.broadcast([order], lambda answers, missing: client.send(
                _with_errors(rid, worker_metrics(answers), answers, missing)), worker_id, rid)
        elif order.type == "QUERY":
            # The master's own answer is taken now: the workers answer after applying every
            # order sent before this one, that is from this very state.
            mine = master.query(order)
            master.broadcast([order], lambda answers, missing: client.send(
                _with_errors(rid, {"workers": _data(answers), "master": mine}, answers, missing)),
                worker_id, rid)
        elif order.type == "STATUS":
            master.broadcast([order], lambda answers, missing: client.send(
                _with_errors(rid, {"workers": master.workers()}, answers, missing)), worker_id, rid)
        elif order.type in TEST_ORDERS:  # each worker's answer as it gave it
            master.broadcast([order], lambda answers, missing: client.send(
                _with_errors(rid, {"workers": _data(answers), "master": None}, answers, missing)),
                worker_id, rid)
        else:
            raise MessageError(f"unsupported order {order.type}")

    def _after_save(self, client, finish):
        """on_done for a broadcast of a change: its answer goes once the state file (with
        automatic_state_save) holds the change."""
        def on_done(answers, missing):
            reply = finish(answers, missing)
            self.master.when_saved(lambda: client.send(reply))
        return on_done

    # -- state files -------------------------------------------------------------------------
    def save_state(self, client, request: Request) -> None:
        path = request.data["path"]

        def done(error, orders):
            if error is None:
                client.send(answer(request.id, "OK", f"saved {orders} orders to {path}"))
            else:
                client.send(answer(request.id, "ERROR", error))
        self.master.save_state(path, done)

    def load_state(self, client, request: Request) -> None:
        """Apply the difference between the running state and the file's, as one broadcast. An
        order of the difference that the master refuses (a port now in use) stops the load:
        the orders before it are applied everywhere, and the answer says where it stopped."""
        path = request.data["path"]
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as error:
            raise MessageError(f"cannot read the state file {path}: {error.strerror or error}") from None
        try:
            target = ConfigState.from_orders(load_orders(data))
        except (MessageError, StateError) as error:
            raise MessageError(f"{path}: {error}") from None
        orders = self.master.difference(target)
        if not orders:
            client.send(answer(request.id, "OK", f"the state is already the one in {path}"))
            return
        applied, refusal = self.master.apply(orders)
        failure = None
        if refusal is not None:
            failure = f"order {len(applied) + 1} of {len(orders)} ({orders[len(applied)].type}) was refused: {refusal}"
            if not applied:
                raise MessageError(f"{path}: {failure}; nothing was changed")

        def finish(answers, missing) -> dict:
            errors = _errors(answers, missing)
            if failure is not None:
                errors.insert(0, f"{path}: {failure}; the {len(applied)} orders before it were applied")
            if errors:
                return answer(request.id, "ERROR", "; ".join(errors))
            return answer(request.id, "OK", f"loaded {path}: {len(applied)} orders (the "
                                            f"difference) applied by {len(answers)} workers")

        self.master.broadcast(applied, self._after_save(client, finish), request_id=request.id)

    # -- upgrades ----------------------------------------------------------------------------
    def upgrade(self, client, request: Request) -> None:
        def done(error, pid):
            if error:
                client.send(answer(request.id, "ERROR", f"upgrade failed: {error}"))
            elif request.type == "UPGRADE_MASTER":
                client.send(answer(request.id, "OK", f"upgraded: master {pid} serves, the previous "
                                                     "generation drains", {"pid": pid}))
            else:
                client.send(answer(request.id, "OK", f"worker {request.data} upgraded"))

        if request.type == "UPGRADE_MASTER":
            self.master.start_upgrade(done)
            client.send(answer(request.id, "PROCESSING", "starting a new master"))
        else:
            self.master.upgrade_worker(request.data, lambda error: done(error, None))
            client.send(answer(request.id, "PROCESSING", f"starting a new worker {request.data}"))


# -- answers ---------------------------------------------------------------------------------
def _errors(answers: dict, missing) -> list[str]:
    errors = [f"worker {wid}: {a.get('message')}" for wid, a in sorted(answers.items())
              if a.get("status") != "OK"]
    errors += [f"worker {wid}: no answer within the command timeout" for wid in sorted(set(missing))]
    return errors


def _data(answers: dict) -> dict:
    return {str(wid): a.get("data") for wid, a in answers.items() if a.get("status") == "OK"}


def _state_changed(request_id, kind: str, answers: dict, missing) -> dict:
    errors = _errors(answers, missing)
    if errors:
        return answer(request_id, "ERROR", "; ".join(errors))
    return answer(request_id, "OK", f"{kind} applied by {len(answers)} workers")


def _with_errors(request_id, data, answers: dict, missing) -> dict:
    errors = _errors(answers, missing)
    return answer(request_id, "ERROR" if errors else "OK", "; ".join(errors), data)
