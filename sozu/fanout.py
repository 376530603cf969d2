"""Fan-out: orders sent to the workers, their answers gathered, with a deadline (master only).

Theory of operation
-------------------
A broadcast sends each of its orders to each worker it names, over the worker's channel, each
as one message with an id of its own, and becomes a Broadcast waiting for those ids. A worker's
answer (on_answer) settles its message; a worker that exits (worker_gone) settles all of its
messages as refused; the master's loop calls expire() every turn, which settles the messages
past their deadline as missing. When nothing is left to wait for, on_done(answers, missing) is
called once: `answers` the last answer of each worker (an ERROR wins over an OK, so that a
refusal of any one order of several is seen), `missing` the ids of the workers that did not
answer in time. A late answer, after its broadcast is settled, is dropped.

What the answers mean is not known here: the command dispatcher (sozu.commands) makes them
into an answer to its client, the master into its metrics. A worker that refuses a change of
the state the master accepted is out of step with it: refused(worker, order type, answer) is
called, for the master to replace it (docs/architecture.md, "Life of an order").
"""
from __future__ import annotations

import itertools
import time

from sozu.messages import STATE_ORDERS


class Broadcast:
    """Orders on their way to some workers, and the answers so far."""

    def __init__(self, kind: str, deadline: float, on_done):
        self.kind = kind                       # the type of its last order, for refusals
        self.deadline = deadline
        self.on_done = on_done                 # on_done(answers by worker id, missing worker ids)
        self.pending: dict[str, int] = {}      # message id -> worker id
        self.answers: dict[int, dict] = {}

    def answer(self, worker_id: int, message: dict) -> None:
        previous = self.answers.get(worker_id)
        if previous is None or previous.get("status") == "OK":
            self.answers[worker_id] = message


class Fanout:
    def __init__(self, send, refused):
        self.send = send          # send(worker, message, fds) -> bool: False when its channel is closed
        self.refused = refused    # refused(worker, order type, answer): a state change it did not take
        self.waiting: dict[str, Broadcast] = {}  # message id -> its broadcast
        self.ids = itertools.count()

    def broadcast(self, workers, orders, timeout: float, on_done, fds_of=lambda worker_id, order: (),
                  request_id: str = "") -> None:
        """Each order to each worker, in order; on_done(answers, missing) once all answered,
        or `timeout` seconds passed. fds_of(worker id, order): the descriptors that travel with
        it (a listener added at runtime)."""
        broadcast = Broadcast(orders[-1].type, time.monotonic() + timeout, on_done)
        for worker in workers:
            for order in orders:
                message_id = f"{request_id}#{next(self.ids)}"
                message = {"id": message_id, "type": "PROXY", "data": order.to_json()}
                fds = fds_of(worker.id, order)
                if fds:
                    message["fds"] = len(fds)
                if self.send(worker, message, fds):
                    broadcast.pending[message_id] = worker.id
                    self.waiting[message_id] = broadcast
                else:  # dying: reaped and replaced from the current state, but it did not apply this
                    broadcast.answer(worker.id, {"status": "ERROR", "message": "its channel is closed"})
        if not broadcast.pending:
            broadcast.on_done(broadcast.answers, [])

    def on_answer(self, worker, message: dict) -> None:
        broadcast = self.waiting.pop(message.get("id"), None)
        if broadcast is None:
            return  # late answer of an expired broadcast: already reported
        broadcast.pending.pop(message["id"], None)
        broadcast.answer(worker.id, message)
        if message.get("status") == "ERROR" and broadcast.kind in STATE_ORDERS:
            self.refused(worker, broadcast.kind, message)
        if not broadcast.pending:
            broadcast.on_done(broadcast.answers, [])

    def worker_gone(self, worker) -> None:
        for message_id, broadcast in list(self.waiting.items()):
            if broadcast.pending.get(message_id) == worker.id:
                del self.waiting[message_id]
                del broadcast.pending[message_id]
                broadcast.answer(worker.id, {"status": "ERROR", "message": "worker exited"})
                if not broadcast.pending:
                    broadcast.on_done(broadcast.answers, [])

    def expire(self, now: float) -> None:
        expired: dict[int, tuple[Broadcast, list[int]]] = {}
        for message_id, broadcast in list(self.waiting.items()):
            if broadcast.deadline <= now:
                del self.waiting[message_id]
                expired.setdefault(id(broadcast), (broadcast, []))[1].append(broadcast.pending.pop(message_id))
        for broadcast, missing in expired.values():
            if not broadcast.pending:
                broadcast.on_done(broadcast.answers, missing)
