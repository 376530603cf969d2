"""The etcd layout (sozu.provider.layout): keys <-> state, without etcd."""
import json

from hypothesis import given

from sozu.messages import Order
from sozu.provider.layout import keys_of, normalize_prefix, translate
from sozu.state import ConfigState
from tests.test_state_properties import SETTINGS, assert_same, states

P = "/sozu/"


def value(kind, data):
    return json.dumps({"type": kind, "data": data}).encode()


LISTENER = value("ADD_HTTP_LISTENER", {"front": "127.0.0.1:8080"})
APP = value("ADD_APPLICATION", {"app_id": "app1"})
BACKEND = value("ADD_BACKEND", {"app_id": "app1", "backend_id": "b1", "address": "127.0.0.1:1026"})
FRONT = value("ADD_HTTP_FRONT", {"app_id": "app1", "address": "127.0.0.1:8080",
                                 "hostname": "example.com", "path_begin": "/"})
GOOD = {P + "listeners/127.0.0.1:8080": LISTENER, P + "applications/app1": APP,
        P + "backends/app1/b1": BACKEND, P + "frontends/app1/www": FRONT}


def all_active(state: ConfigState) -> ConfigState:
    """The state with every listener active: what etcd holds (its listeners are active)."""
    for address, listener in list(state.listeners.items()):
        if not listener.active:
            state.dispatch(Order("ACTIVATE_LISTENER", {"front": address,
                                                       "proxy": listener.protocol.upper(),
                                                       "from_scm": False}))
    return state


def test_keys_describe_listeners_applications_backends_and_fronts():
    translation = translate(P, GOOD)
    assert translation.refused == {}
    state = translation.state
    assert state.listeners["127.0.0.1:8080"].active
    assert list(state.applications) == ["app1"]
    assert [b["backend_id"] for b in state.backends["app1"]] == ["b1"]
    assert state.front_count() == 1


@SETTINGS
@given(states())
def test_the_keys_of_a_state_describe_that_state(state):
    state = all_active(state)
    translation = translate(P, keys_of(P, state))
    assert translation.refused == {}
    assert_same(translation.state, state)


def test_the_order_of_keys_in_the_mapping_does_not_matter():
    reversed_kvs = dict(reversed(list(GOOD.items())))
    assert translate(P, reversed_kvs).state == translate(P, GOOD).state


def test_a_bad_value_is_refused_with_its_key_and_the_rest_applied():
    kvs = {**GOOD,
           P + "applications/broken": b"{not json",
           P + "applications/app2": value("ADD_BACKEND", {"app_id": "app2", "backend_id": "x",
                                                         "address": "127.0.0.1:1"}),
           P + "applications/app3": value("ADD_APPLICATION", {"app_id": "other"}),
           P + "backends/app1/b2": value("ADD_BACKEND", {"app_id": "app1", "backend_id": "b2"}),
           P + "frontends/ghost/www": value("ADD_HTTP_FRONT", {
               "app_id": "ghost", "address": "127.0.0.1:8080", "hostname": "a.com"}),
           P + "colours/red": APP,
           P + "backends/app1": BACKEND}
    translation = translate(P, kvs)
    refused = translation.refused
    assert set(refused) == set(kvs) - set(GOOD)
    assert "not JSON" in refused[P + "applications/broken"]
    assert "ADD_APPLICATION order, not ADD_BACKEND" in refused[P + "applications/app2"]
    assert "'app3'" in refused[P + "applications/app3"] and "'other'" in refused[P + "applications/app3"]
    assert "address" in refused[P + "backends/app1/b2"]
    assert "no application ghost" in refused[P + "frontends/ghost/www"]
    assert "unknown category 'colours'" in refused[P + "colours/red"]
    assert "backends/NAME/NAME" in refused[P + "backends/app1"]
    assert translation.state == translate(P, GOOD).state


def test_a_check_refuses_what_the_state_would_accept():
    def no_backends(order):
        if order.type == "ADD_BACKEND":
            raise ValueError("backends are off today")
    translation = translate(P, GOOD, check=no_backends)
    assert translation.refused == {P + "backends/app1/b1": "backends are off today"}
    assert "app1" not in translation.state.backends


def test_a_change_of_keys_is_the_difference_of_their_states():
    before = translate(P, GOOD).state
    after = translate(P, {k: v for k, v in GOOD.items() if "backends" not in k}).state
    assert [o.type for o in before.diff(after)] == ["REMOVE_BACKEND"]


def test_regex_rules_of_one_host_keep_the_order_of_their_names():
    def regex(app, pattern):
        return value("ADD_HTTP_FRONT", {"app_id": app, "address": "127.0.0.1:8080",
                                        "hostname": "example.com",
                                        "path": {"kind": "REGEX", "value": pattern}})
    kvs = {**GOOD, P + "applications/app0": value("ADD_APPLICATION", {"app_id": "app0"}),
           P + "frontends/app1/0001-first": regex("app1", "^/a"),
           P + "frontends/app0/0002-second": regex("app0", "^/b")}
    fronts = translate(P, kvs).state.to_orders()
    patterns = [o.data["path"]["value"] for o in fronts if o.data.get("path", {}).get("kind") == "REGEX"]
    assert patterns == ["^/a", "^/b"]


def test_prefixes_end_with_one_slash():
    assert normalize_prefix("/sozu") == normalize_prefix("/sozu/") == "/sozu/"


def test_listener_addresses_are_mapped_both_ways():
    here = {"127.0.0.1:8080": "127.0.0.1:18080"}
    state = translate(P, GOOD, addresses=here).state
    assert list(state.listeners) == ["127.0.0.1:18080"]
    assert {host[0] for host in state.http_fronts} == {"127.0.0.1:18080"}
    assert state.backends["app1"][0]["address"] == "127.0.0.1:1026"  # a backend is no listener
    back = keys_of(P, state, {v: k for k, v in here.items()})
    assert translate(P, back).state == translate(P, GOOD).state
