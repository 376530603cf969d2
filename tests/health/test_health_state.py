"""Health checks in the state: configuration that is saved and diffed, verdicts that are not."""
from __future__ import annotations

import random

from sozu.lb import Balancer
from sozu.state import ConfigState, answer_query
from tests.test_state import full, o, refused

CHECK = {"path": "/health", "interval": 1, "timeout": 0.5}


def verdict(up: bool, backend_id="b1", address="127.0.0.1:1026", reason=None):
    return o("SET_BACKEND_HEALTH", app_id="MyApp", backend_id=backend_id, address=address, up=up,
             since=1700000000, reason=reason)


def checked() -> ConfigState:
    state = full()
    state.dispatch(o("SET_HEALTH_CHECK", app_id="MyApp", health_check=CHECK))
    return state


def test_a_health_check_is_configuration():
    state = checked()
    assert state.health_checks["MyApp"]["path"] == "/health"
    assert ConfigState.from_orders(state.to_orders()) == state
    assert full().diff(state) == [o("SET_HEALTH_CHECK", app_id="MyApp", health_check=CHECK)]
    assert state.diff(full()) == [o("SET_HEALTH_CHECK", app_id="MyApp", health_check=None)]
    assert state.hashes()["MyApp"] != full().hashes()["MyApp"]
    assert state.hashes()["TcpApp"] == full().hashes()["TcpApp"]


def test_verdicts_are_observations_not_configuration():
    state = checked()
    state.dispatch(verdict(False, reason="status 500"))
    assert state.health[("MyApp", "b1", "127.0.0.1:1026")]["reason"] == "status 500"
    assert state == checked()                      # neither compared,
    assert "SET_BACKEND_HEALTH" not in {order.type for order in state.to_orders()}  # nor saved
    assert state.copy().health == state.health     # but a forked copy keeps them


def test_verdicts_need_a_check_and_a_backend():
    assert refused(full(), verdict(False)) == "application MyApp has no health check"
    assert refused(checked(), verdict(False, "b9")) == (
        "no backend b9 at 127.0.0.1:1026 in application MyApp")
    assert refused(full(), o("SET_HEALTH_CHECK", app_id="Nope", health_check=CHECK)) == (
        "no application Nope")


def test_verdicts_go_with_their_backend_and_with_the_check():
    state = checked()
    state.dispatch(verdict(False))
    state.dispatch(verdict(False, "b2", "127.0.0.1:1027"))
    state.dispatch(o("REMOVE_BACKEND", app_id="MyApp", backend_id="b1", address="127.0.0.1:1026"))
    assert list(state.health) == [("MyApp", "b2", "127.0.0.1:1027")]
    state.dispatch(o("SET_HEALTH_CHECK", app_id="MyApp", health_check=None))
    assert state.health == {} and state.health_checks == {}
    state = checked()
    state.dispatch(verdict(False))
    state.dispatch(o("REMOVE_APPLICATION", "MyApp"))
    assert state.health == {} and state.health_checks == {}


def test_backends_query():
    state = checked()
    state.dispatch(verdict(False, reason="status 500"))
    rows = {row["backend_id"]: row for row in answer_query(state, {"type": "BACKENDS"})}
    assert rows["b1"]["checked"] and rows["b1"]["up"] is False and rows["b1"]["reason"] == "status 500"
    assert rows["b2"]["checked"] and rows["b2"]["up"] is True
    assert not rows["t1"]["checked"] and rows["t1"]["up"] is None


def test_the_balancer_follows_the_verdicts():
    state = checked()
    balancer = Balancer(random.Random(0))
    balancer.update(state)
    backends = balancer.backends("MyApp")
    b1 = next(b for b in backends if b.backend_id == "b1")
    backends.mark_failure(b1, 100.0, "refused")  # passive: resting for a backoff
    assert {backends.pick(100.0).backend_id for _ in range(4)} == {"b2"}
    state.dispatch(verdict(False, "b2", "127.0.0.1:1027"))
    balancer.update(state)
    # b2 is out even as a last resort; b1 only rests, so it is the one tried
    assert {backends.pick(100.0).backend_id for _ in range(4)} == {"b1"}
    state.dispatch(verdict(False))
    balancer.update(state)
    assert backends.pick(100.0) is None
    state.dispatch(o("ADD_BACKEND", app_id="MyApp", backend_id="spare", address="127.0.0.1:1028",
                     backup=True))
    balancer.update(state)
    assert {backends.pick(100.0).backend_id for _ in range(4)} == {"spare"}  # backups take over
    state.dispatch(verdict(True))
    balancer.update(state)
    assert b1.failures == 0 and b1.is_up(100.0)  # back: its passive backoff ends too
    assert {backends.pick(100.0).backend_id for _ in range(4)} == {"b1"}
