"""Properties of ConfigState over random states built from random order sequences.

A state is grown by drawing orders that mostly refer to what the state already holds (so
fronts land on listeners of the right protocol, backends on known applications) and
sometimes to anything from small pools (so conflicts and unknown references happen too);
orders the state refuses are skipped, which leaves a valid state from a valid sequence.
"""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sozu.messages import STATE_ORDERS, MessageError, Order, dump_orders, load_orders
from sozu.state import ConfigState, StateError
from tests.test_state import CERT1, CERT2, FP1, FP2, KEY1, KEY2

LISTENER_ADDRESSES = ["127.0.0.1:8080", "127.0.0.1:8443", "0.0.0.0:8080", "[::1]:8080",
                      "[::]:9000", "127.0.0.2:9000", "10.0.0.1:7000"]
APP_IDS = ["a", "b", "MyApp"]
HOSTNAMES = ["example.com", "*.example.com", "www.example.com", "other.org"]
PATHS = ["", "/", "/api"]
BACKEND_IDS = ["b1", "b2"]
BACKEND_ADDRESSES = ["127.0.0.1:1026", "127.0.0.1:1027", "[::1]:1028"]
CERTIFICATES = [(CERT1, KEY1), (CERT2, KEY2)]
FINGERPRINTS = [FP1, FP2]
PROTOCOLS = {"http": "HTTP", "https": "HTTPS", "tcp": "TCP"}

SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Orders are drawn with plain index draws rather than composed strategies: a state takes a
# few dozen orders, and building strategies per order would dominate the run time.
_INDEX = [st.integers(0, n) for n in range(64)]


def pick(draw, items):
    return items[draw(_INDEX[len(items) - 1])]


def prefer(draw, existing, pool):
    """Mostly something the state has, sometimes anything from the pool."""
    existing = sorted(existing)
    return pick(draw, existing) if existing and draw(_INDEX[5]) else pick(draw, pool)


def some(draw, fields):
    """A random subset of these {name: candidate values} (the others get their defaults)."""
    chosen = draw(st.integers(0, 2 ** len(fields) - 1))
    return {name: pick(draw, values) for i, (name, values) in enumerate(fields.items())
            if chosen >> i & 1}


LISTENER_FIELDS = {
    "tcp": {"expect_proxy": [False, True], "front_timeout": [1, 60, 90],
            "public_address": [None, "192.0.2.1:80"]},
}
LISTENER_FIELDS["http"] = {**LISTENER_FIELDS["tcp"], "sticky_name": ["SOZUBALANCEID", "lb"],
                           "answer_404": [None, "HTTP/1.1 404 Not Found\r\n\r\n"],
                           "request_timeout": [1, 10, 20]}
LISTENER_FIELDS["https"] = {**LISTENER_FIELDS["http"],
                            "versions": [["TLSv1.2", "TLSv1.3"], ["TLSv1.3"]],
                            "cipher_list": [None, "ECDHE+AESGCM"]}
APPLICATION_FIELDS = {"sticky_session": [False, True], "https_redirect": [False, True],
                      "proxy_protocol": [None, "SendHeader", "ExpectHeader"],
                      "load_balancing_policy": ["roundrobin", "Random", "PowerOfTwo"],
                      "answer_503": [None, "HTTP/1.1 503\r\n\r\n"]}
BACKEND_FIELDS = {"sticky_id": [None, "s1", "s2"], "backup": [False, True],
                  "load_balancing_parameters": [None, {}, {"weight": 0}, {"weight": 1000}]}


def listener_order(draw, state):
    if not state.listeners or draw(_INDEX[1]):
        protocol = pick(draw, list(PROTOCOLS))
        data = {"front": pick(draw, LISTENER_ADDRESSES), **some(draw, LISTENER_FIELDS[protocol])}
        return f"ADD_{PROTOCOLS[protocol]}_LISTENER", data
    known = [(a, l.protocol) for a, l in state.listeners.items()]
    address, protocol = prefer(draw, known, [(a, p) for a in LISTENER_ADDRESSES[:3]
                                             for p in PROTOCOLS])
    kind = pick(draw, ["REMOVE_LISTENER", "ACTIVATE_LISTENER", "ACTIVATE_LISTENER",
                       "ACTIVATE_LISTENER", "DEACTIVATE_LISTENER"])
    return kind, {"front": address, "proxy": PROTOCOLS[protocol]}


def setup_listener(draw, state):
    """Most states have one listener of each protocol, at addresses that do not conflict."""
    protocol = [p for p in ("http", "https", "tcp")
                if not any(l.protocol == p for l in state.listeners.values())]
    protocol = pick(draw, protocol or list(PROTOCOLS))
    address = {"http": "127.0.0.1:8080", "https": "127.0.0.1:8443", "tcp": "127.0.0.2:9000"}
    return f"ADD_{PROTOCOLS[protocol]}_LISTENER", {"front": address[protocol],
                                                   **some(draw, LISTENER_FIELDS[protocol])}


def application_order(draw, state):
    if not state.applications or draw(_INDEX[5]):
        return "ADD_APPLICATION", {"app_id": pick(draw, APP_IDS),
                                   **some(draw, APPLICATION_FIELDS)}
    return "REMOVE_APPLICATION", prefer(draw, state.applications, APP_IDS)


# Path rules and settings of http(s) fronts: regex rules keep the order they were added in,
# which to_orders and diff must carry over.
PATH_RULES = [{}, {"path": {"kind": "EQUALS", "value": "/api"}},
              {"path": {"kind": "REGEX", "value": "^/a"}},
              {"path": {"kind": "REGEX", "value": "[0-9]$"}},
              {"path": {"kind": "REGEX", "value": "x"}}]
FRONT_FIELDS = {"methods": [["GET"], ["GET", "POST"]],
                "redirect": [{"status": 301, "scheme": "https"}],
                "rewrite": [{"strip_prefix": "/api"}],
                "request_headers": [[{"action": "SET", "name": "X-A", "value": "1"}]]}


def front_order(draw, state):
    protocol = pick(draw, ["HTTP", "HTTPS", "TCP"])
    if protocol == "TCP":
        fronts = [{"app_id": app_id, "address": address}
                  for address, app_id in sorted(state.tcp_fronts.items())]
    else:
        fronts = [front for _, group in sorted((state.https_fronts if protocol == "HTTPS" else
                                                state.http_fronts).items())
                  for front in group.values()]
    if fronts and not draw(_INDEX[2]):
        return f"REMOVE_{protocol}_FRONT", pick(draw, fronts)
    addresses = [a for a, l in state.listeners.items() if l.protocol == protocol.lower()]
    data = {"app_id": prefer(draw, state.applications, APP_IDS),
            "address": prefer(draw, addresses, LISTENER_ADDRESSES)}
    if protocol != "TCP":
        rule = pick(draw, PATH_RULES)
        data.update(hostname=pick(draw, HOSTNAMES), **rule, **some(draw, FRONT_FIELDS))
        if not rule:
            data["path_begin"] = pick(draw, PATHS)
    return f"ADD_{protocol}_FRONT", data


def backend_order(draw, state):
    if draw(_INDEX[2]):
        return "ADD_BACKEND", {"app_id": prefer(draw, state.applications, APP_IDS),
                               "backend_id": pick(draw, BACKEND_IDS),
                               "address": pick(draw, BACKEND_ADDRESSES),
                               **some(draw, BACKEND_FIELDS)}
    known = [(b["app_id"], b["backend_id"], b["address"])
             for backends in state.backends.values() for b in backends]
    app_id, backend_id, address = prefer(draw, known, [("a", "b1", BACKEND_ADDRESSES[0])])
    return "REMOVE_BACKEND", {"app_id": app_id, "backend_id": backend_id, "address": address}


def certificate_order(draw, state):
    def certificate():
        cert, key = pick(draw, CERTIFICATES)
        return {"certificate": cert, "key": key,
                "certificate_chain": [CERT2] if draw(_INDEX[1]) else []}

    def names():
        return [pick(draw, HOSTNAMES) for _ in range(draw(_INDEX[2]))]

    kind = pick(draw, ["ADD_CERTIFICATE", "ADD_CERTIFICATE", "REMOVE_CERTIFICATE",
                       "REPLACE_CERTIFICATE"])
    if kind == "ADD_CERTIFICATE":
        https = [a for a, l in state.listeners.items() if l.protocol == "https"]
        return kind, {"front": prefer(draw, https, LISTENER_ADDRESSES),
                      "certificate": certificate(), "names": names()}
    known = [(a, fp) for a, certs in state.certificates.items() for fp in certs]
    front, fp = prefer(draw, known, [(a, fp) for a in LISTENER_ADDRESSES[:2]
                                     for fp in FINGERPRINTS])
    if kind == "REMOVE_CERTIFICATE":
        return kind, {"front": front, "fingerprint": fp}
    return kind, {"front": front, "old_fingerprint": fp, "new_certificate": certificate(),
                  "new_names": names()}


ORDER_MAKERS = [listener_order, application_order, front_order, front_order, front_order,
                backend_order, backend_order, certificate_order, certificate_order]


def draw_order(draw, state) -> Order:
    """An order valid per the schema, maybe not for this state."""
    kind, data = pick(draw, ORDER_MAKERS)(draw, state)
    return Order.from_json({"type": kind, "data": data})


@st.composite
def orders_for(draw, state):
    return draw_order(draw, state)


def protocol_at(state: ConfigState, address: str) -> str | None:
    listener = state.listeners.get(address)
    return listener.protocol if listener else None


def check_invariants(state: ConfigState) -> None:
    for fronts, protocol in ((state.http_fronts, "http"), (state.https_fronts, "https")):
        for (address, hostname), group in fronts.items():
            assert group and protocol_at(state, address) == protocol
            for front in group.values():
                assert (front["address"], front["hostname"]) == (address, hostname)
                assert front["app_id"] in state.applications
    for address, app_id in state.tcp_fronts.items():
        assert protocol_at(state, address) == "tcp" and app_id in state.applications
    for app_id, backends in state.backends.items():
        assert backends and app_id in state.applications
        identities = [(b["backend_id"], b["address"]) for b in backends]
        assert len(identities) == len(set(identities))
    for address, certs in state.certificates.items():
        assert certs and protocol_at(state, address) == "https"


@st.composite
def states(draw, max_orders=40):
    """A few listeners and applications first (most orders need them), then anything."""
    state = ConfigState()
    makers = [setup_listener] * (1 + draw(_INDEX[2])) + [listener_order] * draw(_INDEX[1])
    makers += [application_order] * (1 + draw(_INDEX[2]))
    makers += [pick(draw, ORDER_MAKERS) for _ in range(draw(st.integers(0, max_orders)))]
    for maker in makers:
        kind, data = maker(draw, state)
        try:
            state.dispatch(Order.from_json({"type": kind, "data": data}))
        except StateError:
            pass
    check_invariants(state)
    return state


def assert_same(state: ConfigState, expected: ConfigState) -> None:
    """Equality, shown as the orders that build each side when it fails."""
    if state != expected:
        def lines(s):
            return [json.dumps(o.to_json()).replace(CERT1, "CERT1").replace(CERT2, "CERT2")
                    for o in s.to_orders()]
        assert lines(state) == lines(expected)
        assert state == expected


def through_json(orders):
    return [Order.from_json(json.loads(json.dumps(order.to_json()))) for order in orders]


@SETTINGS
@given(states())
def test_to_orders_rebuilds_the_state(state):
    orders = state.to_orders()
    assert_same(ConfigState.from_orders(orders), state)
    assert through_json(orders) == orders
    assert ConfigState.from_orders(through_json(orders)).hashes() == state.hashes()


@SETTINGS
@given(states(), states())
def test_diff_turns_one_state_into_the_other(a, b):
    orders = a.diff(b)
    result = a.copy()
    for order in orders:
        result.dispatch(order)  # every order of a diff applies
    assert_same(result, b)
    assert through_json(orders) == orders
    assert result.diff(b) == [] and b.diff(b) == []
    assert a == ConfigState.from_orders(a.to_orders())  # diff did not touch a


@SETTINGS
@given(states())
def test_saved_state_rebuilds_the_state(state):
    assert_same(ConfigState.from_orders(load_orders(dump_orders(state.to_orders()))), state)


@SETTINGS
@given(st.data())
def test_dispatch_applies_fully_or_not_at_all(data):
    state = data.draw(states(max_orders=25))
    before = state.copy()
    for _ in range(5):
        order = data.draw(orders_for(state))
        snapshot = state.copy()
        try:
            state.dispatch(order)
        except StateError:
            assert state == snapshot
        check_invariants(state)
    # The copy taken at the start never saw those orders.
    assert before == ConfigState.from_orders(before.to_orders())
    assert ConfigState.from_orders(before.to_orders() + before.diff(state)) == state


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False)
    | st.sampled_from(["", "a", "127.0.0.1:80", "[::1]:1", "example.com", "HTTP", "/", FP1])
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["app_id", "address", "hostname", "front", "type",
                                       "data", "weight", "names", "x"]), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(STATE_ORDERS)), JSON_VALUES)
def test_arbitrary_json_is_an_order_or_a_message_error(kind, data):
    try:
        order = Order.from_json({"type": kind, "data": data})
    except MessageError:
        return
    assert Order.from_json(order.to_json()) == order
    state = ConfigState()
    try:
        state.dispatch(order)
    except StateError:
        assert state == ConfigState()
