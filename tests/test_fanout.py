"""sozu.fanout without processes: what is sent, what settles a broadcast, when on_done is called."""
from __future__ import annotations

from types import SimpleNamespace

from sozu.fanout import Fanout
from sozu.messages import Order

ADD = Order.from_json({"type": "ADD_APPLICATION", "data": {"app_id": "a"}})
STATUS = Order.from_json({"type": "STATUS"})


class Workers:
    """Stand-ins for the master's workers and their channels: what each was sent."""

    def __init__(self, *ids, closed=()):
        self.workers = [SimpleNamespace(id=i) for i in ids]
        self.closed = set(closed)
        self.sent: list[tuple[int, dict, tuple]] = []
        self.refused: list[tuple[int, str]] = []
        self.done: list[tuple[dict, list]] = []
        self.fanout = Fanout(self.send, lambda worker, kind, answer: self.refused.append((worker.id, kind)))

    def send(self, worker, message, fds) -> bool:
        if worker.id in self.closed:
            return False
        self.sent.append((worker.id, message, fds))
        return True

    def broadcast(self, orders, timeout=1.0, **extra):
        self.fanout.broadcast(self.workers, orders, timeout,
                              lambda answers, missing: self.done.append((dict(answers), missing)), **extra)

    def answer(self, worker_id, status="OK", index=None):
        ids = [m["id"] for wid, m, _ in self.sent if wid == worker_id]
        message_id = ids[-1] if index is None else ids[index]
        self.fanout.on_answer(self.workers[worker_id], {"id": message_id, "status": status, "message": status})


def test_every_order_goes_to_every_worker_and_the_answers_settle_it():
    w = Workers(0, 1)
    w.broadcast([ADD, STATUS], request_id="r")
    assert [(wid, m["data"]["type"]) for wid, m, _ in w.sent] == [
        (0, "ADD_APPLICATION"), (0, "STATUS"), (1, "ADD_APPLICATION"), (1, "STATUS")]
    assert all(m["id"].startswith("r#") for _, m, _ in w.sent) and len({m["id"] for _, m, _ in w.sent}) == 4
    w.answer(0, index=0)
    w.answer(0, "ERROR", index=1)
    w.answer(1, index=0)
    assert w.done == []
    w.answer(1, index=1)
    [(answers, missing)] = w.done
    assert missing == [] and answers[0]["status"] == "ERROR" and answers[1]["status"] == "OK"
    w.answer(1, index=1)  # late or repeated: dropped
    assert len(w.done) == 1


def test_a_worker_refusing_a_state_change_is_reported_a_query_is_not():
    w = Workers(0)
    w.broadcast([ADD])
    w.answer(0, "ERROR")
    w.broadcast([STATUS])
    w.answer(0, "ERROR")
    assert w.refused == [(0, "ADD_APPLICATION")] and len(w.done) == 2


def test_silent_workers_are_missing_after_the_deadline_and_gone_ones_refused():
    w = Workers(0, 1, 2, closed={2})
    w.broadcast([ADD], timeout=5.0)
    w.fanout.worker_gone(w.workers[1])
    w.fanout.expire(now=0.0)
    assert w.done == []
    w.fanout.expire(now=float("inf"))
    [(answers, missing)] = w.done
    assert missing == [0]
    assert answers[1]["message"] == "worker exited" and answers[2]["message"] == "its channel is closed"


def test_no_worker_to_wait_for_settles_at_once_and_descriptors_travel_with_their_order():
    w = Workers()
    w.broadcast([ADD])
    assert w.done == [({}, [])]
    w = Workers(3)
    w.broadcast([ADD, STATUS], fds_of=lambda worker_id, order: (7,) if order is ADD else ())
    assert [(m.get("fds"), fds) for _, m, fds in w.sent] == [(1, (7,)), (None, ())]
