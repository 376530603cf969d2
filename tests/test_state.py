"""sozu.state: each order's rules and error messages, to_orders, diff, hashes and queries."""
import json

import pytest

from sozu.messages import Order
from sozu.state import ConfigState, Listener, StateError, fingerprint


def routes(fronts) -> dict:
    """{(address, hostname, path_begin): app_id} of a state's http_fronts or https_fronts."""
    return {(f["address"], f["hostname"], f["path_begin"]): f["app_id"]
            for group in fronts.values() for f in group.values()}

# Self-signed test certificates (openssl req -x509 -newkey ec -pkeyopt
# ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj /CN=testN.example.com).
CERT1 = """-----BEGIN CERTIFICATE-----
MIIBqzCCAVGgAwIBAgIUR9NMsGayM2bSxOK4CUUd2g+UaZwwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdGVzdDEuZXhhbXBsZS5jb20wHhcNMjYxMTI2MjAyNDI4WhcN
MzYxMTIzMjAyNDI4WjAcMRowGAYDVQQDDBF0ZXN0MS5leGFtcGxlLmNvbTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABKPrTFr0yriJfpAXi7Mk3EQA1mJbB5Fp0YSH
3/jWkeV+Bc0KbLLgs3bI7VakoDD1111RIhr74LCGf4LU3AxowDOjcTBvMB0GA1Ud
DgQWBBSK0EOR/8rL4hIbnlWlmzC059VKizAfBgNVHSMEGDAWgBSK0EOR/8rL4hIb
nlWlmzC059VKizAPBgNVHRMBAf8EBTADAQH/MBwGA1UdEQQVMBOCEXRlc3QxLmV4
YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIQC8AoxARGPIQ3j1b4hvs5rT3xBn
6x8R85vrxtRt/LCbkgIgfujzeHCFM6yNQwZiJubUcHl7YRbp03O5B7soxIpab+M=
-----END CERTIFICATE-----
"""
KEY1 = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgoKBDUfGaoLi7sjoq
P48Ce1SFqqc2w9QOQPq4UBDmk7WhRANCAASj60xa9Mq4iX6QF4uzJNxEANZiWweR
adGEh9/41pHlfgXNCmyy4LN2yO1WpKAw9dddUSIa++Cwhn+C1NwMaMAz
-----END PRIVATE KEY-----
"""
CERT2 = """-----BEGIN CERTIFICATE-----
MIIBrDCCAVGgAwIBAgIUGy7zmO56lGYtkCH+vnrHN5zrDuAwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdGVzdDIuZXhhbXBsZS5jb20wHhcNMjYxMTI2MjAyNDI4WhcN
MzYxMTIzMjAyNDI4WjAcMRowGAYDVQQDDBF0ZXN0Mi5leGFtcGxlLmNvbTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABIPw1tx7mSg2PWH/+3X8jNXfCRhrnTarGXY7
1COMhQ0777ZFZ9p/AWhPtlsx3PRrn4iN00pKpAahAbkf7sjxEPCjcTBvMB0GA1Ud
DgQWBBRFrsPRicjpcuRwPGGxaGInby01NzAfBgNVHSMEGDAWgBRFrsPRicjpcuRw
PGGxaGInby01NzAPBgNVHRMBAf8EBTADAQH/MBwGA1UdEQQVMBOCEXRlc3QyLmV4
YW1wbGUuY29tMAoGCCqGSM49BAMCA0kAMEYCIQCFZou/ir7QL8ZWGOX/qAr6lgb7
n9WxrSG97L45IN3SBAIhAIXMjSwlueIWc3Yqx3qFTIEnVl2mrt75m75oijCAYVjH
-----END CERTIFICATE-----
"""
KEY2 = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgV6zdxc9DvbgXncn2
civkNkzcpexHiDghmrXWoZ4If4OhRANCAASD8Nbce5koNj1h//t1/IzV3wkYa502
qxl2O9QjjIUNO++2RWfafwFoT7ZbMdz0a5+IjdNKSqQGoQG5H+7I8RDw
-----END PRIVATE KEY-----
"""
# openssl x509 -in cert.pem -outform der | sha256sum
FP1 = "6791aff08940d5f04b811c7de82a953e89ce18dcdd48fa1b65e456adaab904b1"
FP2 = "f78085d83e9eca454f0a1505eb23aefd7a1161bb76e84a1251b2aafe74c8a1cc"

HTTP, HTTPS, TCP = "127.0.0.1:8080", "127.0.0.1:8443", "127.0.0.1:8081"


def o(kind, data=None, **fields):
    return Order.from_json({"type": kind, "data": fields if fields else data})


def cert_order(front=HTTPS, cert=CERT1, key=KEY1, names=(), chain=()):
    return o("ADD_CERTIFICATE", front=front, names=list(names),
             certificate={"certificate": cert, "key": key, "certificate_chain": list(chain)})


def base() -> ConfigState:
    """Three active listeners, an HTTP application and a TCP application, no fronts."""
    return ConfigState.from_orders([
        o("ADD_HTTP_LISTENER", front=HTTP), o("ACTIVATE_LISTENER", front=HTTP, proxy="HTTP"),
        o("ADD_HTTPS_LISTENER", front=HTTPS), o("ACTIVATE_LISTENER", front=HTTPS, proxy="HTTPS"),
        o("ADD_TCP_LISTENER", front=TCP), o("ACTIVATE_LISTENER", front=TCP, proxy="TCP"),
        o("ADD_APPLICATION", app_id="MyApp"), o("ADD_APPLICATION", app_id="TcpApp"),
    ])


def full() -> ConfigState:
    state = base()
    for order in [
        o("ADD_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname="example.com"),
        o("ADD_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname="*.example.com",
          path_begin="/api"),
        o("ADD_HTTPS_FRONT", app_id="MyApp", address=HTTPS, hostname="example.com"),
        o("ADD_TCP_FRONT", app_id="TcpApp", address=TCP),
        o("ADD_BACKEND", app_id="MyApp", backend_id="b1", address="127.0.0.1:1026"),
        o("ADD_BACKEND", app_id="MyApp", backend_id="b2", address="127.0.0.1:1027"),
        o("ADD_BACKEND", app_id="TcpApp", backend_id="t1", address="127.0.0.1:4000"),
        cert_order(names=["example.com"]),
    ]:
        state.dispatch(order)
    return state


def refused(state: ConfigState, order: Order) -> str:
    """The StateError text; also checks the state did not change."""
    before = state.copy()
    with pytest.raises(StateError) as info:
        state.dispatch(order)
    assert state == before
    return str(info.value)


# --- certificates' fingerprints ---------------------------------------------------------------

def test_fingerprint_is_sha256_of_the_der():
    assert fingerprint(CERT1) == FP1 and fingerprint(CERT2) == FP2
    assert fingerprint("junk before\r\n" + CERT1.replace("\n", "\r\n") + CERT2) == FP1


@pytest.mark.parametrize("pem,expected", [
    ("", "no valid BEGIN/END CERTIFICATE block"),
    (KEY1, "no valid BEGIN/END CERTIFICATE block"),
    (CERT1.replace("MIIBqz", "MIIBq!"), "no valid BEGIN/END CERTIFICATE block"),
    (CERT1.replace("MIIBqz", "MIIBq"), "bad base64"),
    ("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----", "not a DER"),
    ("-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----", "not a DER"),
])
def test_invalid_pem_is_a_state_error(pem, expected):
    with pytest.raises(StateError) as info:
        fingerprint(pem)
    assert expected in str(info.value)


# --- listeners --------------------------------------------------------------------------------

def test_listener_is_added_inactive_then_activated():
    state = ConfigState()
    add = o("ADD_HTTPS_LISTENER", front="[::1]:8443")
    state.dispatch(add)
    assert state.listeners == {"[::1]:8443": Listener("https", add.data, False)}
    state.dispatch(o("ACTIVATE_LISTENER", front="[::1]:8443", proxy="HTTPS"))
    assert state.listeners["[::1]:8443"].active
    state.dispatch(o("ACTIVATE_LISTENER", front="[::1]:8443", proxy="HTTPS"))  # idempotent
    state.dispatch(o("DEACTIVATE_LISTENER", front="[::1]:8443", proxy="HTTPS"))
    assert state.listeners["[::1]:8443"] == Listener("https", add.data, False)
    state.dispatch(o("DEACTIVATE_LISTENER", front="[::1]:8443", proxy="HTTPS"))


def test_listener_address_conflicts():
    state = base()
    assert refused(state, o("ADD_TCP_LISTENER", front=HTTP)) == \
        f"a http listener already uses {HTTP}"
    assert refused(state, o("ADD_HTTP_LISTENER", front="0.0.0.0:8080")) == (
        f"the address 0.0.0.0:8080 overlaps the listener at {HTTP} (same port, and one of "
        "them listens on every address)")
    state.dispatch(o("ADD_HTTP_LISTENER", front="0.0.0.0:9000"))
    assert "overlaps" in refused(state, o("ADD_HTTP_LISTENER", front="10.1.2.3:9000"))
    state.dispatch(o("ADD_HTTP_LISTENER", front="[::]:9000"))  # another family
    state.dispatch(o("ADD_HTTP_LISTENER", front="127.0.0.1:9001"))
    state.dispatch(o("ADD_HTTP_LISTENER", front="127.0.0.2:8080"))  # another address


def test_listener_protocol_must_match():
    state = base()
    assert refused(state, o("ACTIVATE_LISTENER", front=HTTP, proxy="TCP")) == \
        f"the listener at {HTTP} is http, not tcp"
    assert refused(state, o("REMOVE_LISTENER", front=HTTPS, proxy="HTTP")) == \
        f"the listener at {HTTPS} is https, not http"
    assert refused(state, o("REMOVE_LISTENER", front="127.0.0.1:1", proxy="HTTP")) == \
        "no http listener at 127.0.0.1:1"
    assert refused(state, o("DEACTIVATE_LISTENER", front="127.0.0.1:1", proxy="TCP")) == \
        "no tcp listener at 127.0.0.1:1"


def test_remove_listener_removes_its_fronts_and_certificates():
    state = full()
    state.dispatch(o("REMOVE_LISTENER", front=HTTPS, proxy="HTTPS"))
    assert HTTPS not in state.listeners and state.certificates == {}
    assert state.https_fronts == {} and len(routes(state.http_fronts)) == 2
    state.dispatch(o("REMOVE_LISTENER", front=HTTP, proxy="HTTP"))
    state.dispatch(o("REMOVE_LISTENER", front=TCP, proxy="TCP"))
    assert state.http_fronts == {} and state.tcp_fronts == {} and state.listeners == {}
    assert set(state.applications) == {"MyApp", "TcpApp"} and len(state.backends) == 2


# --- applications -----------------------------------------------------------------------------

def test_add_application_again_replaces_settings_only():
    state = full()
    new = o("ADD_APPLICATION", app_id="MyApp", sticky_session=True,
            load_balancing_policy="random")
    state.dispatch(new)
    assert state.applications["MyApp"] == new.data
    assert state.applications["MyApp"]["load_balancing_policy"] == "Random"
    assert len(state.backends["MyApp"]) == 2 and len(routes(state.http_fronts)) == 2


def test_remove_application_removes_its_fronts_and_backends():
    state = full()
    state.dispatch(o("REMOVE_APPLICATION", "MyApp"))
    assert set(state.applications) == {"TcpApp"}
    assert state.http_fronts == {} and state.https_fronts == {} and "MyApp" not in state.backends
    assert state.tcp_fronts == {TCP: "TcpApp"} and FP1 in state.certificates[HTTPS]
    assert refused(state, o("REMOVE_APPLICATION", "MyApp")) == "no application MyApp"


# --- fronts -----------------------------------------------------------------------------------

def test_http_front_rules():
    state = base()
    front = dict(app_id="MyApp", address=HTTP, hostname="Example.COM", path_begin="/a")
    state.dispatch(o("ADD_HTTP_FRONT", **front))
    assert routes(state.http_fronts) == {(HTTP, "example.com", "/a"): "MyApp"}
    state.dispatch(o("ADD_HTTP_FRONT", **front))  # same app: no-op
    assert len(routes(state.http_fronts)) == 1
    assert refused(state, o("ADD_HTTP_FRONT", **{**front, "app_id": "TcpApp"})) == \
        f"http front example.com/a on {HTTP} already routes to application MyApp"
    assert refused(state, o("ADD_HTTP_FRONT", **{**front, "app_id": "Nope"})) == \
        "no application Nope"
    assert refused(state, o("ADD_HTTP_FRONT", **{**front, "address": "127.0.0.1:1"})) == \
        "no http listener at 127.0.0.1:1"
    assert refused(state, o("ADD_HTTP_FRONT", **{**front, "address": HTTPS})) == \
        f"the listener at {HTTPS} is https, not http"
    assert refused(state, o("ADD_HTTP_FRONT", **{**front, "address": TCP})) == \
        f"the listener at {TCP} is tcp, not http"
    assert refused(state, o("REMOVE_HTTP_FRONT", **{**front, "path_begin": ""})) == \
        f"no http front example.com on {HTTP}"
    assert refused(state, o("REMOVE_HTTP_FRONT", **{**front, "app_id": "TcpApp"})) == \
        f"the http front example.com/a on {HTTP} belongs to application MyApp, not TcpApp"
    state.dispatch(o("REMOVE_HTTP_FRONT", **front))
    assert state.http_fronts == {}


def test_fronts_differing_only_by_path_are_distinct():
    state = base()
    for path in ("", "/", "/api"):
        state.dispatch(o("ADD_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname="a.com",
                         path_begin=path))
    assert len(routes(state.http_fronts)) == 3


def test_https_front_rules():
    state = base()
    front = dict(app_id="MyApp", address=HTTPS, hostname="*.example.com")
    state.dispatch(o("ADD_HTTPS_FRONT", **front))
    assert routes(state.https_fronts) == {(HTTPS, "*.example.com", ""): "MyApp"}
    assert refused(state, o("ADD_HTTPS_FRONT", **{**front, "address": HTTP})) == \
        f"the listener at {HTTP} is http, not https"
    assert refused(state, o("ADD_HTTPS_FRONT", **{**front, "app_id": "TcpApp"})) == \
        f"https front *.example.com on {HTTPS} already routes to application MyApp"
    assert refused(state, o("REMOVE_HTTPS_FRONT", **{**front, "hostname": "a.b"})) == \
        f"no https front a.b on {HTTPS}"
    state.dispatch(o("REMOVE_HTTPS_FRONT", **front))
    assert state.https_fronts == {}


def test_tcp_front_rules():
    state = base()
    state.dispatch(o("ADD_TCP_FRONT", app_id="TcpApp", address=TCP))
    state.dispatch(o("ADD_TCP_FRONT", app_id="TcpApp", address=TCP))  # no-op
    assert state.tcp_fronts == {TCP: "TcpApp"}
    assert refused(state, o("ADD_TCP_FRONT", app_id="MyApp", address=TCP)) == \
        f"the tcp listener {TCP} already routes to application TcpApp"
    assert refused(state, o("ADD_TCP_FRONT", app_id="MyApp", address=HTTP)) == \
        f"the listener at {HTTP} is http, not tcp"
    assert refused(state, o("ADD_TCP_FRONT", app_id="X", address=TCP)) == "no application X"
    assert refused(state, o("REMOVE_TCP_FRONT", app_id="MyApp", address=TCP)) == \
        f"the tcp front on {TCP} belongs to application TcpApp, not MyApp"
    assert refused(state, o("REMOVE_TCP_FRONT", app_id="MyApp", address=HTTP)) == \
        f"no tcp front on {HTTP}"
    state.dispatch(o("REMOVE_TCP_FRONT", app_id="TcpApp", address=TCP))
    assert state.tcp_fronts == {}


# --- backends ---------------------------------------------------------------------------------

def test_backends_keep_insertion_order_and_replace_in_place():
    state = base()
    b1 = o("ADD_BACKEND", app_id="MyApp", backend_id="b1", address="127.0.0.1:1026")
    b2 = o("ADD_BACKEND", app_id="MyApp", backend_id="b2", address="127.0.0.1:1027")
    b1_other_address = o("ADD_BACKEND", app_id="MyApp", backend_id="b1",
                         address="127.0.0.1:1028")
    for order in (b1, b2, b1_other_address):
        state.dispatch(order)
    assert state.backends["MyApp"] == [b1.data, b2.data, b1_other_address.data]
    b1_heavy = o("ADD_BACKEND", app_id="MyApp", backend_id="b1", address="127.0.0.1:1026",
                 load_balancing_parameters={"weight": 7}, backup=True)
    state.dispatch(b1_heavy)
    assert state.backends["MyApp"] == [b1_heavy.data, b2.data, b1_other_address.data]


def test_backend_rules():
    state = base()
    assert refused(state, o("ADD_BACKEND", app_id="Nope", backend_id="b1",
                            address="127.0.0.1:1026")) == "no application Nope"
    state.dispatch(o("ADD_BACKEND", app_id="MyApp", backend_id="b1", address="127.0.0.1:1026"))
    assert refused(state, o("REMOVE_BACKEND", app_id="MyApp", backend_id="b1",
                            address="127.0.0.1:1027")) == \
        "no backend b1 at 127.0.0.1:1027 in application MyApp"
    assert refused(state, o("REMOVE_BACKEND", app_id="TcpApp", backend_id="b1",
                            address="127.0.0.1:1026")) == \
        "no backend b1 at 127.0.0.1:1026 in application TcpApp"
    assert refused(state, o("REMOVE_BACKEND", app_id="Nope", backend_id="b1",
                            address="127.0.0.1:1026")) == "no application Nope"
    state.dispatch(o("REMOVE_BACKEND", app_id="MyApp", backend_id="b1",
                     address="127.0.0.1:1026"))
    assert state.backends == {}  # the last removal drops the key


# --- certificates -----------------------------------------------------------------------------

def test_add_certificate_stores_it_under_its_fingerprint():
    state = base()
    state.dispatch(cert_order(names=["a.com"], chain=[CERT2]))
    assert state.certificates == {HTTPS: {FP1: {
        "certificate": CERT1, "certificate_chain": [CERT2], "key": KEY1, "names": ["a.com"]}}}
    state.dispatch(cert_order(cert=CERT2, key=KEY2))
    assert set(state.certificates[HTTPS]) == {FP1, FP2}
    state.dispatch(cert_order(names=["b.com"]))  # the same certificate again replaces it
    assert state.certificates[HTTPS][FP1]["names"] == ["b.com"]
    assert state.certificates[HTTPS][FP1]["certificate_chain"] == []


@pytest.mark.parametrize("order,expected", [
    (cert_order(front=HTTP), f"the listener at {HTTP} is http, not https"),
    (cert_order(front="127.0.0.1:1"), "no https listener at 127.0.0.1:1"),
    (cert_order(cert="garbage"), "not a PEM certificate"),
    (cert_order(chain=[CERT2, "x"]), "certificate_chain[1]: not a PEM certificate"),
    (cert_order(key="not a key"), "key: not a PEM private key"),
    (cert_order(key=CERT2), "key: not a PEM private key"),
    (cert_order(key=KEY1.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")),
     "key: encrypted private keys are not supported"),
])
def test_add_certificate_errors(order, expected):
    assert expected in refused(base(), order)


def test_add_certificate_accepts_typed_keys():
    state = base()
    state.dispatch(cert_order(key=KEY1.replace("PRIVATE KEY", "EC PRIVATE KEY")))
    assert FP1 in state.certificates[HTTPS]


def test_remove_and_replace_certificate():
    state = base()
    state.dispatch(cert_order())
    assert refused(state, o("REMOVE_CERTIFICATE", front=HTTPS, fingerprint=FP2)) == \
        f"no certificate {FP2} on the listener {HTTPS}"
    replace = o("REPLACE_CERTIFICATE", front=HTTPS, old_fingerprint=FP1, new_names=["n.com"],
                new_certificate={"certificate": CERT2, "key": KEY2})
    assert refused(ConfigState.from_orders(base().to_orders()), replace) == \
        f"no certificate {FP1} on the listener {HTTPS}"
    bad = o("REPLACE_CERTIFICATE", front=HTTPS, old_fingerprint=FP1,
            new_certificate={"certificate": "x", "key": KEY2})
    assert "not a PEM certificate" in refused(state, bad)
    state.dispatch(replace)
    assert list(state.certificates[HTTPS]) == [FP2]
    assert state.certificates[HTTPS][FP2]["names"] == ["n.com"]
    state.dispatch(o("REMOVE_CERTIFICATE", front=HTTPS, fingerprint=FP2.upper()))
    assert state.certificates == {}
    assert refused(state, o("REMOVE_CERTIFICATE", front=HTTP, fingerprint=FP2)) == \
        f"the listener at {HTTP} is http, not https"


def test_replace_certificate_by_itself_updates_names():
    state = base()
    state.dispatch(cert_order(names=["a.com"]))
    state.dispatch(o("REPLACE_CERTIFICATE", front=HTTPS, old_fingerprint=FP1,
                     new_certificate={"certificate": CERT1, "key": KEY1}))
    assert state.certificates[HTTPS][FP1]["names"] == []


# --- dispatch in general ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["QUERY", "STATUS", "SOFT_STOP", "HARD_STOP", "METRICS",
                                  "LOGGING"])
def test_command_orders_are_not_state_orders(kind):
    data = {"type": "APPLICATIONS_HASHES"} if kind == "QUERY" else "info" \
        if kind == "LOGGING" else None
    assert refused(full(), o(kind, data)) == f"{kind} is not a state order"


@pytest.mark.parametrize("order", [
    Order("BOGUS", {}), Order(["ADD_BACKEND"], {}), Order("ADD_BACKEND", "x"), Order("ADD_BACKEND", None),
    Order("ADD_HTTP_FRONT", {"app_id": "MyApp"}), Order("REMOVE_APPLICATION", ["MyApp"]),
    Order("ADD_HTTP_FRONT", {"app_id": "MyApp", "address": HTTP, "hostname": [],
                             "path_begin": ""}),
    Order("ADD_CERTIFICATE", {"front": HTTPS, "certificate": {"certificate": 1}, "names": []}),
    Order("ACTIVATE_LISTENER", {"front": HTTP, "proxy": None}),
])
def test_orders_built_without_from_json_fail_cleanly(order):
    refused(full(), order)


# --- orders out -------------------------------------------------------------------------------

def test_to_orders_is_in_dependency_order_and_rebuilds_the_state():
    state = full()
    state.dispatch(o("ADD_TCP_LISTENER", front="127.0.0.1:9999"))  # stays inactive
    orders = state.to_orders()
    kinds = [order.type for order in orders]
    assert kinds == ["ADD_HTTP_LISTENER", "ADD_TCP_LISTENER", "ADD_HTTPS_LISTENER",
                     "ADD_TCP_LISTENER", "ACTIVATE_LISTENER", "ACTIVATE_LISTENER",
                     "ACTIVATE_LISTENER", "ADD_CERTIFICATE", "ADD_APPLICATION",
                     "ADD_APPLICATION", "ADD_BACKEND", "ADD_BACKEND", "ADD_BACKEND",
                     "ADD_HTTP_FRONT", "ADD_HTTP_FRONT", "ADD_HTTPS_FRONT", "ADD_TCP_FRONT"]
    assert ConfigState.from_orders(orders) == state
    assert all(Order.from_json(order.to_json()) == order for order in orders)
    assert ConfigState().to_orders() == []


def test_copy_is_independent():
    state = full()
    clone = state.copy()
    assert clone == state and clone is not state
    clone.dispatch(o("REMOVE_BACKEND", app_id="MyApp", backend_id="b1",
                     address="127.0.0.1:1026"))
    clone.dispatch(o("REMOVE_CERTIFICATE", front=HTTPS, fingerprint=FP1))
    clone.dispatch(o("DEACTIVATE_LISTENER", front=HTTP, proxy="HTTP"))
    clone.dispatch(o("ADD_BACKEND", app_id="TcpApp", backend_id="t2", address="127.0.0.1:1"))
    assert clone != state
    assert state == full()


def test_equality_ignores_empty_containers():
    a, b = ConfigState(), ConfigState()
    b.backends["x"] = []
    b.certificates["y"] = {}
    assert a == b and a != "state"


def test_diff_of_equal_states_is_empty():
    assert full().diff(full()) == []
    assert ConfigState().diff(ConfigState()) == []


def check_diff(a: ConfigState, b: ConfigState) -> list[Order]:
    orders = a.diff(b)
    result = a.copy()
    for order in orders:
        result.dispatch(order)
    assert result == b
    return orders


def test_diff_from_and_to_empty():
    assert check_diff(ConfigState(), full()) == full().to_orders()
    kinds = [order.type for order in check_diff(full(), ConfigState())]
    assert kinds == ["REMOVE_HTTP_FRONT", "REMOVE_HTTP_FRONT", "REMOVE_HTTPS_FRONT",
                     "REMOVE_TCP_FRONT", "REMOVE_BACKEND", "REMOVE_BACKEND", "REMOVE_BACKEND",
                     "REMOVE_CERTIFICATE", "REMOVE_APPLICATION", "REMOVE_APPLICATION",
                     "REMOVE_LISTENER", "REMOVE_LISTENER", "REMOVE_LISTENER"]


def test_diff_of_a_changed_application_is_one_add_application():
    b = full()
    b.dispatch(o("ADD_APPLICATION", app_id="MyApp", https_redirect=True))
    assert check_diff(full(), b) == [Order("ADD_APPLICATION", b.applications["MyApp"])]


def test_diff_of_a_changed_listener_removes_and_adds_it_with_its_routes():
    b = ConfigState.from_orders(
        [o("ADD_HTTPS_LISTENER", front=HTTPS, cipher_list="ECDHE+AESGCM")]
        + [order for order in full().to_orders() if order.data.get("front") != HTTPS
           or order.type != "ADD_HTTPS_LISTENER"])
    orders = check_diff(full(), b)
    assert [order.type for order in orders] == [
        "REMOVE_HTTPS_FRONT", "REMOVE_CERTIFICATE", "REMOVE_LISTENER", "ADD_HTTPS_LISTENER",
        "ACTIVATE_LISTENER", "ADD_CERTIFICATE", "ADD_HTTPS_FRONT"]


def test_diff_activation_and_moves():
    a, b = full(), full()
    b.dispatch(o("DEACTIVATE_LISTENER", front=TCP, proxy="TCP"))
    b.dispatch(o("REMOVE_TCP_FRONT", app_id="TcpApp", address=TCP))
    b.dispatch(o("ADD_TCP_FRONT", app_id="MyApp", address=TCP))
    b.dispatch(cert_order(names=["other.com"]))
    assert [order.type for order in check_diff(a, b)] == [
        "REMOVE_TCP_FRONT", "DEACTIVATE_LISTENER", "ADD_CERTIFICATE", "ADD_TCP_FRONT"]
    assert [order.type for order in check_diff(b, a)] == [
        "REMOVE_TCP_FRONT", "ACTIVATE_LISTENER", "ADD_CERTIFICATE", "ADD_TCP_FRONT"]


def test_diff_keeps_backend_order():
    a, b = base(), base()
    backends = [o("ADD_BACKEND", app_id="MyApp", backend_id=f"b{i}", address=f"10.0.0.{i}:80")
                for i in range(1, 6)]
    for order in backends:
        a.dispatch(order)
    for i in (1, 2, 4, 3):
        b.dispatch(backends[i - 1])
    b.dispatch(o("ADD_BACKEND", app_id="MyApp", backend_id="b2", address="10.0.0.2:80",
                 backup=True))
    orders = check_diff(a, b)
    assert [(order.type, order.data["backend_id"]) for order in orders] == [
        ("REMOVE_BACKEND", "b5"), ("REMOVE_BACKEND", "b3"), ("REMOVE_BACKEND", "b4"),
        ("ADD_BACKEND", "b2"), ("ADD_BACKEND", "b4"), ("ADD_BACKEND", "b3")]


def test_diff_handles_wildcard_listener_swaps():
    a = ConfigState.from_orders([o("ADD_HTTP_LISTENER", front="0.0.0.0:80")])
    b = ConfigState.from_orders([o("ADD_HTTP_LISTENER", front="127.0.0.1:80")])
    check_diff(a, b)
    check_diff(b, a)


# --- hashes and queries -----------------------------------------------------------------------

def test_hashes_are_stable_and_change_with_the_application():
    a = full()
    orders = full().to_orders()
    fronts = [order for order in orders if order.type.endswith("_FRONT")]
    b = ConfigState.from_orders([order for order in orders if order not in fronts] + fronts[::-1])
    assert a.hashes() == b.hashes() and set(a.hashes()) == {"MyApp", "TcpApp"}
    assert len(a.hashes()["MyApp"]) == 64
    before = a.hashes()
    a.dispatch(o("ADD_BACKEND", app_id="MyApp", backend_id="b9", address="127.0.0.1:9"))
    after = a.hashes()
    assert after["MyApp"] != before["MyApp"] and after["TcpApp"] == before["TcpApp"]
    a.dispatch(o("ADD_HTTPS_FRONT", app_id="TcpApp", address=HTTPS, hostname="t.com"))
    assert a.hashes()["TcpApp"] != after["TcpApp"]


def test_hash_ignores_front_insertion_order():
    a, b = base(), base()
    fronts = [o("ADD_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname=f"h{i}.com")
              for i in range(5)]
    for order in fronts:
        a.dispatch(order)
    for order in reversed(fronts):
        b.dispatch(order)
    assert a == b and a.hashes() == b.hashes()


def test_query_applications():
    state = full()
    apps = state.query_applications()
    assert [app["app_id"] for app in apps] == ["MyApp", "TcpApp"]
    my_app = apps[0]
    assert my_app["configuration"] == state.applications["MyApp"]
    assert my_app["http_frontends"] == [
        {"app_id": "MyApp", "address": HTTP, "hostname": "*.example.com", "path_begin": "/api"},
        {"app_id": "MyApp", "address": HTTP, "hostname": "example.com", "path_begin": ""}]
    assert my_app["https_frontends"] == [
        {"app_id": "MyApp", "address": HTTPS, "hostname": "example.com", "path_begin": ""}]
    assert my_app["tcp_frontends"] == [] and len(my_app["backends"]) == 2
    assert apps[1]["tcp_frontends"] == [{"app_id": "TcpApp", "address": TCP}]
    assert state.query_applications(app_id="TcpApp") == [apps[1]]
    assert state.query_applications(app_id="Nope") == []
    json.dumps(apps)


@pytest.mark.parametrize("domain,path,found", [
    ("example.com", None, True), ("EXAMPLE.com", None, True), ("www.example.com", None, True),
    ("a.b.example.com", None, False), ("ample.com", None, False), ("other.com", None, False),
    ("*.example.com", None, True), ("www.example.com", "/api/v1", True),
    ("www.example.com", "/web", False), ("example.com", "/anything", True),
])
def test_query_applications_by_domain(domain, path, found):
    apps = full().query_applications(domain=domain, path_begin=path)
    assert [app["app_id"] for app in apps] == (["MyApp"] if found else [])


def test_query_results_are_copies():
    state = full()
    state.query_applications()[0]["configuration"]["sticky_session"] = True
    state.to_json()["applications"][0]["backends"][0]["backup"] = True
    assert state == full()


def test_to_json_dump_has_no_private_keys():
    state = full()
    dump = state.to_json()
    text = json.dumps(dump)
    assert "PRIVATE" not in text and KEY1.splitlines()[1] not in text
    assert dump["certificates"] == [{"address": HTTPS, "fingerprint": FP1,
                                     "names": ["example.com"]}]
    assert [(l["address"], l["protocol"], l["active"]) for l in dump["listeners"]] == [
        (HTTP, "http", True), (TCP, "tcp", True), (HTTPS, "https", True)]
    assert dump["listeners"][0]["config"] == state.listeners[HTTP].config
    assert dump["applications"] == state.query_applications()


def test_certificate_order_survives_replacement_and_rebuilding(tmp_path):
    """The first certificate of a listener is its default: a replacement keeps the replaced
    one's place, and to_orders() rebuilds the same order (a respawned worker agrees)."""
    from tests.integration.certs import TestCA
    third = TestCA(tmp_path).issue(["third.test"])
    state = ConfigState()
    state.dispatch(Order.from_json({"type": "ADD_HTTPS_LISTENER", "data": {"front": "127.0.0.1:8443"}}))
    for cert, key in ((CERT2, KEY2), (CERT1, KEY1)):
        state.dispatch(Order.from_json({"type": "ADD_CERTIFICATE", "data": {
            "front": "127.0.0.1:8443", "certificate": {"certificate": cert, "key": key}}}))
    first, second = list(state.certificates["127.0.0.1:8443"])
    assert list(ConfigState.from_orders(state.to_orders()).certificates["127.0.0.1:8443"]) == [first, second]
    state.dispatch(Order.from_json({"type": "REPLACE_CERTIFICATE", "data": {
        "front": "127.0.0.1:8443", "old_fingerprint": first,
        "new_certificate": {"certificate": third.cert_pem, "key": third.key_pem}}}))
    assert list(state.certificates["127.0.0.1:8443"]) == [third.fingerprint, second]
    assert list(ConfigState.from_orders(state.to_orders()).certificates["127.0.0.1:8443"]) == [
        third.fingerprint, second]


# --- fronts with rules (docs/routing.md) ------------------------------------------------------

def regex_front(pattern: str, app_id: str = "MyApp", **fields) -> Order:
    return o("ADD_HTTP_FRONT", app_id=app_id, address=HTTP, hostname="a.com",
             path={"kind": "REGEX", "value": pattern}, **fields)


def regex_order(state) -> list[str]:
    return [rule[1] for rule in state.http_fronts[(HTTP, "a.com")] if rule[0] == "REGEX"]


def test_fronts_are_identified_by_path_kind_value_and_methods():
    state = base()
    for fields in ({"path_begin": "/a"}, {"path": {"kind": "EQUALS", "value": "/a"}},
                   {"path": {"kind": "REGEX", "value": "/a"}}, {"path_begin": "/a", "methods": ["GET"]}):
        state.dispatch(o("ADD_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname="a.com", **fields))
    assert len(state.http_fronts[(HTTP, "a.com")]) == 4
    assert refused(state, o("REMOVE_HTTP_FRONT", app_id="MyApp", address=HTTP, hostname="a.com",
                            path_begin="/a", methods=["POST"])) == f"no http front a.com/a [POST] on {HTTP}"
    assert refused(state, regex_front("/a", app_id="TcpApp")) == \
        f"http front a.com ~/a on {HTTP} already routes to application MyApp"


def test_new_settings_for_a_front_keep_its_place_among_the_regex_rules():
    state = base()
    for pattern in ("^/1", "^/2", "^/3"):
        state.dispatch(regex_front(pattern))
    before = state.http_fronts[(HTTP, "a.com")]
    state.dispatch(regex_front("^/2", request_headers=[{"action": "SET", "name": "X-A", "value": "1"}]))
    assert regex_order(state) == ["^/1", "^/2", "^/3"]
    assert state.http_fronts[(HTTP, "a.com")] is not before  # replaced, never mutated
    assert before[("REGEX", "^/2", ())].get("request_headers") is None


def test_to_orders_and_diff_keep_the_order_of_regex_rules():
    one, two = base(), base()
    for pattern in ("^/1", "^/2", "^/3"):
        one.dispatch(regex_front(pattern))
    for pattern in ("^/3", "^/1", "^/2"):
        two.dispatch(regex_front(pattern))
    assert one != two  # the same fronts, in another order: another routing
    assert regex_order(ConfigState.from_orders(two.to_orders())) == ["^/3", "^/1", "^/2"]
    changed = one.copy()
    for order in one.diff(two):
        changed.dispatch(order)
    assert regex_order(changed) == ["^/3", "^/1", "^/2"] and changed == two
    assert [o.type for o in two.diff(one)].count("REMOVE_HTTP_FRONT") == 1  # ^/3 goes to the end
