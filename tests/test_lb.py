"""sozu.lb: policies, passive health, sticky sessions, updates that keep live counters."""

import math
import random
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.lb import POLICIES, Balancer, BackendSet, backoff, normalise_policy

NOW = 1000.0


def backend(
    backend_id, weight=100, sticky_id=None, backup=False, address=None, explicit_weight=True
):
    return {
        "app_id": "app",
        "backend_id": backend_id,
        "address": address or f"10.0.0.{sum(map(ord, backend_id)) % 250 + 1}:80",
        "sticky_id": sticky_id,
        "load_balancing_parameters": {"weight": weight} if explicit_weight else None,
        "backup": backup,
    }


def make(policy, *backends, seed=0):
    return BackendSet(policy, list(backends), random.Random(seed))


def by_id(backend_set):
    return {b.backend_id: b for b in backend_set}


def picks(backend_set, n, now=NOW, **kwargs):
    return [backend_set.pick(now, **kwargs).backend_id for _ in range(n)]


# --- Backend ----------------------------------------------------------------------------


def test_backend_defaults_from_add_backend_data():
    b = by_id(make("RoundRobin", backend("a", explicit_weight=False)))["a"]
    assert (b.weight, b.sticky_id, b.backup) == (100, None, False)
    assert (b.active_connections, b.failures, b.down_until, b.retired) == (0, 0, 0.0, False)
    assert b.sticky_key == "a"
    assert by_id(make("RoundRobin", backend("a", sticky_id="s")))["a"].sticky_key == "s"
    assert b.is_up(0.0) and "a" in repr(b)


def test_policy_names():
    assert normalise_policy("roundrobin") == "RoundRobin"
    assert normalise_policy("PowerOfTwo") == "PowerOfTwo"
    assert normalise_policy("leastconnections") == "LeastConnections"
    with pytest.raises(ValueError, match="unknown load balancing policy"):
        make("Fastest", backend("a"))


# --- RoundRobin -------------------------------------------------------------------------


def test_round_robin_is_smooth():
    s = make("RoundRobin", backend("a", 3), backend("b", 1))
    assert picks(s, 8) == ["a", "a", "b", "a"] * 2


def test_round_robin_5_1_1_like_nginx():
    s = make("RoundRobin", backend("a", 5), backend("b", 1), backend("c", 1))
    assert "".join(picks(s, 7)) == "aabacaa"


def test_round_robin_equal_weights_rotate():
    s = make("roundrobin", backend("a"), backend("b"), backend("c"))
    assert picks(s, 6) == ["a", "b", "c", "a", "b", "c"]


# --- Random -----------------------------------------------------------------------------


def test_random_is_weighted_and_reproducible():
    s = make("Random", backend("a", 1), backend("b", 3), seed=42)
    got = picks(s, 4000)
    assert got == picks(make("Random", backend("a", 1), backend("b", 3), seed=42), 4000)
    assert 800 < got.count("a") < 1200


# --- LeastConnections -------------------------------------------------------------------


def test_least_connections_picks_the_least_loaded():
    s = make("LeastConnections", backend("a"), backend("b"), backend("c"))
    a, b, c = by_id(s).values()
    for _ in range(3):
        s.acquire(a)
    s.acquire(c)
    assert s.pick(NOW) is b
    s.acquire(b)
    s.acquire(b)
    assert s.pick(NOW) is c


def test_least_connections_breaks_ties_by_weighted_round_robin():
    s = make("LeastConnections", backend("a", 3), backend("b", 1), backend("c", 1))
    s.acquire(by_id(s)["c"])
    assert picks(s, 8) == ["a", "a", "b", "a"] * 2


def test_least_connections_spreads_held_connections():
    s = make("LeastConnections", backend("a"), backend("b"), backend("c"))
    for _ in range(30):
        s.acquire(s.pick(NOW))
    assert [b.active_connections for b in s] == [10, 10, 10]


# --- PowerOfTwo -------------------------------------------------------------------------


def test_power_of_two_avoids_the_loaded_backend():
    s = make("PowerOfTwo", backend("a"), backend("b"), backend("c"), seed=1)
    loaded = by_id(s)["a"]
    for _ in range(50):
        s.acquire(loaded)
    # "a" wins only when it is drawn twice, and the two draws are distinct.
    assert "a" not in picks(s, 300)


def test_power_of_two_keeps_load_balanced():
    s = make("PowerOfTwo", *(backend(name) for name in "abcdef"), seed=3)
    for _ in range(600):
        s.acquire(s.pick(NOW))
    loads = [b.active_connections for b in s]
    assert sum(loads) == 600 and max(loads) - min(loads) <= 4


def test_power_of_two_with_two_backends_compares_both():
    s = make("PowerOfTwo", backend("a", 1), backend("b", 1000), seed=5)
    s.acquire(by_id(s)["b"])
    assert set(picks(s, 50)) == {"a"}


# --- candidates: backup, weight 0, exclude, down ----------------------------------------


def test_backup_only_when_no_primary_is_available():
    s = make("RoundRobin", backend("a"), backend("spare", backup=True))
    a, spare = by_id(s).values()
    assert set(picks(s, 10)) == {"a"}
    assert s.pick(NOW, exclude={a}) is spare
    s.mark_failure(a, NOW)
    assert s.pick(NOW) is spare
    assert s.pick(NOW + 1.0) is a  # backoff over: the primary is back


def test_weight_zero_is_never_picked_by_the_policy():
    for policy in POLICIES:
        s = make(policy, backend("a"), backend("zero", 0))
        assert set(picks(s, 50)) == {"a"}
        assert s.pick(NOW, exclude={by_id(s)["a"]}) is None


def test_excluded_backends_are_skipped_then_none():
    s = make("RoundRobin", backend("a"), backend("b"), backend("c", backup=True))
    tried = set()
    order = []
    while (chosen := s.pick(NOW, exclude=tried)) is not None:
        order.append(chosen.backend_id)
        tried.add(chosen)
    assert sorted(order) == ["a", "b", "c"] and order[-1] == "c"


def test_every_backend_resting_gives_the_earliest_to_wake_up():
    s = make("RoundRobin", backend("a"), backend("b"), backend("c"))
    a, b, c = by_id(s).values()
    s.mark_failure(a, NOW)
    s.mark_failure(a, NOW + 1.0)  # a: failures 2, rests until NOW + 3
    s.mark_failure(b, NOW + 0.5)  # b: rests until NOW + 1.5
    s.mark_failure(c, NOW + 0.9)  # c: rests until NOW + 1.9
    now = NOW + 1.2
    assert not any(backend.is_up(now) for backend in (a, b, c))
    assert s.pick(now) is b
    assert s.pick(now, exclude={b}) is c
    # After one pass where every backend has been excluded: None.
    assert s.pick(now, exclude={a, b, c}) is None


def test_a_resting_primary_gives_way_to_an_up_backup_to_a_resting_primary():
    s = make("RoundRobin", backend("a"), backend("spare", backup=True))
    a, spare = by_id(s).values()
    s.mark_failure(a, NOW)
    assert s.pick(NOW) is spare
    s.mark_failure(spare, NOW)
    assert s.pick(NOW) is a  # both resting: a wakes first (same failure time, listed first)


def test_no_backends():
    s = make("RoundRobin")
    assert s.pick(NOW) is None and len(s) == 0


# --- passive health ---------------------------------------------------------------------


def test_backoff_doubles_up_to_thirty_seconds():
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff(10_000) == 30


def test_mark_failure_and_success_report_health_transitions():
    s = make("RoundRobin", backend("a"))
    a = by_id(s)["a"]
    assert s.mark_failure(a, NOW) is True  # BACKEND_DOWN
    assert not a.is_up(NOW + 0.99) and a.is_up(NOW + 1.0)
    # A failure from an attempt begun before it went down does not escalate.
    assert s.mark_failure(a, NOW + 0.5) is False
    assert (a.failures, a.down_until) == (1, NOW + 1.0)
    # Half-open retry fails: rests twice as long, no second BACKEND_DOWN.
    assert s.mark_failure(a, NOW + 1.0) is False
    assert (a.failures, a.down_until) == (2, NOW + 3.0)
    assert s.mark_failure(a, NOW + 3.0) is False
    assert a.down_until == NOW + 7.0
    assert s.mark_success(a) is True  # BACKEND_UP
    assert (a.failures, a.is_up(NOW)) == (0, True)
    assert s.mark_success(a) is False
    assert s.mark_failure(a, NOW + 10.0) is True and a.down_until == NOW + 11.0


def test_backoff_caps_at_thirty_seconds():
    s = make("RoundRobin", backend("a"))
    a = by_id(s)["a"]
    now, rests = NOW, []
    for _ in range(8):
        s.mark_failure(a, now)  # each half-open retry fails
        rests.append(a.down_until - now)
        now = a.down_until
    assert rests == [1, 2, 4, 8, 16, 30, 30, 30]


# --- sticky sessions --------------------------------------------------------------------


def test_sticky_id_wins_over_the_policy():
    s = make("RoundRobin", backend("a", sticky_id="sa"), backend("b", sticky_id="sb"))
    assert set(picks(s, 5, sticky_id="sb")) == {"b"}


def test_sticky_falls_back_to_backend_id():
    s = make("RoundRobin", backend("a"), backend("b"))
    assert set(picks(s, 5, sticky_id="b")) == {"b"}


def test_sticky_backend_down_or_excluded_uses_the_policy():
    s = make("RoundRobin", backend("a", sticky_id="sa"), backend("b", sticky_id="sb"))
    a, b = by_id(s).values()
    assert s.pick(NOW, exclude={b}, sticky_id="sb") is a
    s.mark_failure(b, NOW)
    assert s.pick(NOW, sticky_id="sb") is a
    assert s.pick(NOW + 1.0, sticky_id="sb") is b
    assert s.pick(NOW, sticky_id="unknown") in (a, b)


def test_sticky_to_a_draining_backend_stays():
    s = make("RoundRobin", backend("a"), backend("drain", 0, sticky_id="d"))
    assert s.pick(NOW, sticky_id="d").backend_id == "drain"
    assert set(picks(s, 5)) == {"a"}


def test_sticky_to_a_retired_backend_is_lost():
    s = make("RoundRobin", backend("a"), backend("b", sticky_id="sb"))
    s.update("RoundRobin", [backend("a")])
    assert s.pick(NOW, sticky_id="sb").backend_id == "a"


# --- update -----------------------------------------------------------------------------


def test_update_keeps_counters_retires_removed_and_applies_settings():
    s = make("RoundRobin", backend("a"), backend("b"))
    a, b = by_id(s).values()
    s.acquire(a)
    s.acquire(b)
    s.mark_failure(a, NOW)
    s.update("LeastConnections", [backend("a", 7, backup=True), backend("c")])
    assert s.policy == "LeastConnections"
    kept, c = by_id(s).values()
    assert kept is a and (a.weight, a.backup, a.active_connections, a.failures) == (7, True, 1, 1)
    assert c.active_connections == 0 and not c.retired
    assert b.retired and b not in list(s)
    s.release(b)  # the connection in flight on the retired backend ends normally
    assert b.active_connections == 0
    assert s.mark_failure(b, NOW) is False  # no events for a retired backend
    assert set(picks(s, 10)) == {"c"}


def test_same_id_other_address_is_another_backend():
    s = make("RoundRobin", backend("a", address="10.0.0.1:80"))
    old = by_id(s)["a"]
    s.update("RoundRobin", [backend("a", address="10.0.0.2:80")])
    assert old.retired and by_id(s)["a"] is not old


def test_duplicate_identity_later_settings_win():
    s = make("RoundRobin", backend("a", 1), backend("b"), backend("a", 5))
    assert [(b.backend_id, b.weight) for b in s] == [("a", 5), ("b", 100)]


def test_balancer_follows_the_state():
    rng = random.Random(0)
    balancer = Balancer(rng)
    state = SimpleNamespace(
        applications={
            "web": {"app_id": "web", "load_balancing_policy": "RoundRobin"},
            "api": {"app_id": "api", "load_balancing_policy": "poweroftwo"},
            "empty": {"app_id": "empty"},
        },
        backends={"web": [backend("w1"), backend("w2")], "api": [backend("a1")]},
        health={},
    )
    balancer.update(state)
    assert balancer.backends("nope") is None
    web = balancer.backends("web")
    assert balancer.backends("api").policy == "PowerOfTwo"
    assert (
        balancer.backends("empty").policy == "RoundRobin"
        and balancer.backends("empty").pick(NOW) is None
    )
    w1 = by_id(web)["w1"]
    web.acquire(w1)
    a1 = by_id(balancer.backends("api"))["a1"]

    del state.applications["api"]
    del state.backends["api"]
    state.backends["web"].append(backend("w3"))
    balancer.update(state)
    assert balancer.backends("web") is web and by_id(web)["w1"] is w1 and w1.active_connections == 1
    assert len(web) == 3
    assert balancer.backends("api") is None and a1.retired


def test_balancer_default_rng():
    balancer = Balancer()
    balancer.update(
        SimpleNamespace(
            applications={"x": {"load_balancing_policy": "Random"}}, backends={"x": [backend("b")]},
            health={},
        )
    )
    assert balancer.backends("x").pick(NOW).backend_id == "b"


def test_an_unchanged_set_is_not_rebuilt_and_a_replaced_setting_is_applied():
    backends = [backend("b1", 10), backend("b2", 20)]
    s = make("RoundRobin", *backends)
    members = list(s)
    s.update("RoundRobin", list(backends))  # the same dicts: nothing to do
    assert list(s) == members and [b.weight for b in s] == [10, 20]
    backends[1] = backend("b2", 30)  # the state replaces a backend's dict when it changes
    s.update("RoundRobin", iter(backends))
    assert list(s) == members and [b.weight for b in s] == [10, 30]
    s.update("Random", iter(backends))
    assert s.policy == "Random"


# --- properties -------------------------------------------------------------------------

weights_strategy = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(weights_strategy)
def test_round_robin_exact_counts_over_a_full_cycle(weights):
    s = make("RoundRobin", *(backend(f"b{i}", w) for i, w in enumerate(weights)))
    positive = [w for w in weights if w > 0]
    if not positive:
        assert s.pick(NOW) is None
        return
    gcd = math.gcd(*positive)
    cycle = sum(positive) // gcd
    for _ in range(2):  # the second cycle repeats the first exactly
        counts = Counter(picks(s, cycle))
        assert counts == {f"b{i}": w // gcd for i, w in enumerate(weights) if w > 0}
    assert all(b.current == 0 for b in s)


def within(count, n, p, sigmas=6.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=5),
    st.integers(0, 2**32),
    st.sampled_from(["Random", "PowerOfTwo"]),
)
def test_random_policies_respect_weights_statistically(weights, seed, policy):
    # Unloaded (no acquire), PowerOfTwo keeps its first weighted draw: weighted random too.
    n = 3000
    s = make(policy, *(backend(f"b{i}", w) for i, w in enumerate(weights)), seed=seed)
    counts = Counter(picks(s, n))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert within(counts[f"b{i}"], n, w / total), (counts, weights)


backend_specs = st.lists(
    st.fixed_dictionaries(
        {
            "weight": st.sampled_from([0, 1, 5, 100]),
            "backup": st.booleans(),
            "down_for": st.sampled_from([None, None, 0.5, 2.0, 10.0]),
            "excluded": st.booleans(),
            "retired": st.booleans(),
            "connections": st.integers(0, 3),
            "sticky_id": st.sampled_from([None, "s1", "s2"]),
        }
    ),
    min_size=0,
    max_size=7,
)


def build(policy, specs, seed):
    s = make(
        policy,
        *(
            backend(f"b{i}", spec["weight"], spec["sticky_id"], spec["backup"])
            for i, spec in enumerate(specs)
        ),
        seed=seed,
    )
    objects = list(s)
    for b, spec in zip(objects, specs):
        for _ in range(spec["connections"]):
            s.acquire(b)
        if spec["down_for"] is not None:
            b.failures, b.down_until = 1, NOW + spec["down_for"]
    s.update(
        policy,
        [
            backend(f"b{i}", spec["weight"], spec["sticky_id"], spec["backup"])
            for i, spec in enumerate(specs)
            if not spec["retired"]
        ],
    )
    exclude = {b for b, spec in zip(objects, specs) if spec["excluded"]}
    return s, objects, exclude


def usable(b, exclude):
    return not b.retired and b not in exclude and b.weight > 0 and b.is_up(NOW)


@settings(max_examples=300, deadline=None)
@given(
    backend_specs,
    st.sampled_from(POLICIES),
    st.integers(0, 1000),
    st.sampled_from([None, "s1", "s2", "b0"]),
)
def test_pick_only_picks_what_it_may(specs, policy, seed, sticky_id):
    s, objects, exclude = build(policy, specs, seed)
    for _ in range(5):
        got = s.pick(NOW, exclude=exclude, sticky_id=sticky_id)
        eligible = [b for b in objects if usable(b, exclude)]
        sticky = [
            b
            for b in objects
            if not b.retired and b not in exclude and b.is_up(NOW) and b.sticky_key == sticky_id
        ]
        if sticky:
            assert got in sticky
        elif eligible:
            assert got in eligible
            if any(not b.backup for b in eligible):
                assert not got.backup  # backup only when no primary
        else:
            resting = [b for b in objects if not b.retired and b not in exclude and b.weight > 0]
            if resting:
                assert got is min(resting, key=lambda b: b.down_until)
            else:
                assert got is None
        if got is not None:
            assert not got.retired and got not in exclude


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from("abcdef")), st.sampled_from(POLICIES)),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(0, 5), min_size=6, max_size=6),
)
def test_update_keeps_counters_of_remaining_backends(generations, loads):
    s = make("RoundRobin", *(backend(name) for name in "abcdef"))
    for b, load in zip(s, loads):
        for _ in range(load):
            s.acquire(b)
        b.failures = load
    live = {b.backend_id: b for b in s}
    for names, policy in generations:
        s.update(policy, [backend(name) for name in sorted(names)])
        now = by_id(s)
        assert set(now) == names
        for name, b in now.items():
            if name in live:
                assert b is live[name]
                assert (b.active_connections, b.failures) == (
                    loads["abcdef".index(name)],
                    loads["abcdef".index(name)],
                )
            else:
                assert (b.active_connections, b.failures, b.retired) == (0, 0, False)
        for name, b in live.items():
            assert b.retired == (name not in names)
        if names:
            assert s.pick(NOW).backend_id in names
        live = now
        loads = [0 if name not in now else now[name].active_connections for name in "abcdef"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["acquire", "release", "update", "pick"]), st.integers(0, 3)),
        max_size=60,
    )
)
def test_acquire_release_never_negative(operations):
    s = make("LeastConnections", *(backend(name) for name in "abcd"))
    held = list(s)
    for operation, index in operations:
        b = held[index % len(held)]
        if operation == "acquire":
            s.acquire(b)
        elif operation == "release":
            s.release(b)
        elif operation == "update":
            s.update(
                "LeastConnections", [backend(name) for name in "abcd"[index:]] + [backend("e")]
            )
            held = held + list(s)
        else:
            picked = s.pick(NOW)
            if picked is not None:
                s.acquire(picked)
                held.append(picked)
        assert all(x.active_connections >= 0 for x in held)
