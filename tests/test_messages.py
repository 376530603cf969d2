"""sozu.messages: the order schema of docs/orders.md, requests, answers, framing, saved state."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.messages import (COMMAND_ORDERS, STATE_ORDERS, Decoder, FrameTooLarge,
                           MessageError, Order, Request, answer, answer_id, dump_orders, encode,
                           load_orders)


def order(kind, data=None):
    return Order.from_json({"type": kind, "data": data})


def error_of(obj) -> str:
    with pytest.raises(MessageError) as info:
        Order.from_json(obj)
    return str(info.value)


HTTP_LISTENER_DEFAULTS = {
    "public_address": None, "answer_404": None, "answer_503": None, "expect_proxy": False,
    "sticky_name": "SOZUBALANCEID", "front_timeout": 60, "back_timeout": 30,
    "connect_timeout": 3, "request_timeout": 10}

# (type, data as sent, normalised data): one minimal order of each type, defaults filled.
DEFAULTS = [
    ("ADD_APPLICATION", {"app_id": "MyApp"},
     {"app_id": "MyApp", "sticky_session": False, "https_redirect": False,
      "proxy_protocol": None, "send_proxy_version": 2, "load_balancing_policy": "RoundRobin", "answer_503": None}),
    ("REMOVE_APPLICATION", "MyApp", "MyApp"),
    ("ADD_HTTP_FRONT", {"app_id": "A", "address": "127.0.0.1:80", "hostname": "example.com"},
     {"app_id": "A", "address": "127.0.0.1:80", "hostname": "example.com", "path_begin": ""}),
    ("REMOVE_HTTP_FRONT", {"app_id": "A", "address": "127.0.0.1:80", "hostname": "a.b"},
     {"app_id": "A", "address": "127.0.0.1:80", "hostname": "a.b", "path_begin": ""}),
    ("ADD_HTTPS_FRONT", {"app_id": "A", "address": "[::1]:443", "hostname": "x.y",
                         "path_begin": "/api"},
     {"app_id": "A", "address": "[::1]:443", "hostname": "x.y", "path_begin": "/api"}),
    ("REMOVE_HTTPS_FRONT", {"app_id": "A", "address": "[::1]:443", "hostname": "x.y"},
     {"app_id": "A", "address": "[::1]:443", "hostname": "x.y", "path_begin": ""}),
    ("ADD_TCP_FRONT", {"app_id": "T", "address": "127.0.0.1:81"},
     {"app_id": "T", "address": "127.0.0.1:81"}),
    ("REMOVE_TCP_FRONT", {"app_id": "T", "address": "127.0.0.1:81"},
     {"app_id": "T", "address": "127.0.0.1:81"}),
    ("ADD_BACKEND", {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026"},
     {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026", "sticky_id": None,
      "load_balancing_parameters": None, "backup": False}),
    ("REMOVE_BACKEND", {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026"},
     {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026"}),
    ("SET_HEALTH_CHECK", {"app_id": "A", "health_check": {"path": "/health"}},
     {"app_id": "A", "health_check": {
         "protocol": "http", "method": "GET", "path": "/health", "host": None,
         "expected_statuses": [], "expected_body": None, "interval": 2.0, "timeout": 1.0,
         "rise": 2, "fall": 3}}),
    ("SET_BACKEND_HEALTH", {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026",
                            "up": False, "since": 1700000000.5, "reason": "status 500"},
     {"app_id": "A", "backend_id": "b1", "address": "127.0.0.1:1026", "up": False,
      "since": 1700000000.5, "reason": "status 500"}),
    ("ADD_CERTIFICATE", {"front": "127.0.0.1:443", "certificate": {"certificate": "C",
                                                                 "key": "K"}},
     {"front": "127.0.0.1:443", "certificate": {"certificate": "C", "certificate_chain": [],
                                                "key": "K"}, "names": []}),
    ("REMOVE_CERTIFICATE", {"front": "127.0.0.1:443", "fingerprint": "ab" * 32},
     {"front": "127.0.0.1:443", "fingerprint": "ab" * 32, "names": []}),
    ("REPLACE_CERTIFICATE", {"front": "127.0.0.1:443", "old_fingerprint": "AB" * 32,
                             "new_certificate": {"certificate": "C", "key": "K"}},
     {"front": "127.0.0.1:443", "new_certificate": {"certificate": "C",
                                                    "certificate_chain": [], "key": "K"},
      "old_fingerprint": "ab" * 32, "new_names": []}),
    ("ADD_HTTP_LISTENER", {"front": "127.0.0.1:80"},
     {"front": "127.0.0.1:80", **HTTP_LISTENER_DEFAULTS}),
    ("ADD_HTTPS_LISTENER", {"front": "127.0.0.1:443"},
     {"front": "127.0.0.1:443", **HTTP_LISTENER_DEFAULTS, "versions": ["TLSv1.2", "TLSv1.3"],
      "cipher_list": None, "alpn": ["h2", "http/1.1"], "http2_max_concurrent_streams": 100}),
    ("ADD_TCP_LISTENER", {"front": "127.0.0.1:81"},
     {"front": "127.0.0.1:81", "public_address": None, "expect_proxy": False,
      "front_timeout": 60, "back_timeout": 30, "connect_timeout": 3}),
    ("REMOVE_LISTENER", {"front": "127.0.0.1:80", "proxy": "HTTP"},
     {"front": "127.0.0.1:80", "proxy": "HTTP"}),
    ("ACTIVATE_LISTENER", {"front": "127.0.0.1:80", "proxy": "http"},
     {"front": "127.0.0.1:80", "proxy": "HTTP", "from_scm": False}),
    ("DEACTIVATE_LISTENER", {"front": "127.0.0.1:80", "proxy": "Tcp"},
     {"front": "127.0.0.1:80", "proxy": "TCP", "to_scm": False}),
    ("QUERY", {"type": "APPLICATIONS_HASHES"}, {"type": "APPLICATIONS_HASHES", "data": None}),
    ("QUERY", {"type": "APPLICATIONS"}, {"type": "APPLICATIONS", "data": None}),
    ("QUERY", {"type": "APPLICATIONS", "data": {"type": "APP_ID", "data": "MyApp"}},
     {"type": "APPLICATIONS", "data": {"type": "APP_ID", "data": "MyApp"}}),
    ("QUERY", {"type": "APPLICATIONS", "data": {"type": "DOMAIN",
                                                "data": {"hostname": "WWW.Example.com"}}},
     {"type": "APPLICATIONS", "data": {"type": "DOMAIN", "data": {
         "hostname": "www.example.com", "path_begin": None}}}),
    ("QUERY", {"type": "CERTIFICATES", "data": None}, {"type": "CERTIFICATES", "data": None}),
    ("SOFT_STOP", None, None),
    ("HARD_STOP", None, None),
    ("STATUS", None, None),
    ("METRICS", None, None),
    ("METRICS", "enable", "ENABLE"),
    ("LOGGING", "info,sozu.http=debug", "info,sozu.http=debug"),
]


@pytest.mark.parametrize("kind,data,expected", DEFAULTS)
def test_defaults_are_filled_and_round_trip(kind, data, expected):
    o = order(kind, data)
    assert o == Order(kind, expected)
    assert o.to_json() == {"type": kind, "data": expected}
    assert Order.from_json(o.to_json()) == o
    assert Order.from_json(json.loads(json.dumps(o.to_json()))) == o


def test_every_order_type_is_covered_and_classified():
    assert {kind for kind, _, _ in DEFAULTS} == STATE_ORDERS | COMMAND_ORDERS
    assert not STATE_ORDERS & COMMAND_ORDERS
    assert "ADD_BACKEND" in STATE_ORDERS and "QUERY" in COMMAND_ORDERS


def test_command_orders_accept_absent_data():
    assert Order.from_json({"type": "SOFT_STOP"}) == Order("SOFT_STOP", None)


@pytest.mark.parametrize("given,normal", [
    ("127.0.0.1:80", "127.0.0.1:80"),
    ("127.0.0.1:080", "127.0.0.1:80"),
    ("0.0.0.0:65535", "0.0.0.0:65535"),
    ("[::1]:80", "[::1]:80"),
    ("[0:0:0:0:0:0:0:1]:8080", "[::1]:8080"),
    ("[2001:DB8::0001]:443", "[2001:db8::1]:443"),
])
def test_addresses_are_normalised(given, normal):
    data = {"app_id": "A", "backend_id": "b", "address": given}
    assert order("ADD_BACKEND", data).data["address"] == normal


@pytest.mark.parametrize("bad", [
    "foo", "localhost:80", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:0", "127.0.0.1:65536",
    "127.0.0.1:123456", "::1:80", "[::1]", "[127.0.0.1]:80", "1.2.3:80", "01.2.3.4:80",
    "[fe80::1%eth0]:80", " 127.0.0.1:80", "127.0.0.1:80 ", "127.0.0.1:+80", "",
])
def test_bad_addresses_are_refused(bad):
    text = error_of({"type": "ADD_BACKEND",
                     "data": {"app_id": "A", "backend_id": "b", "address": bad}})
    assert text.startswith(f'ADD_BACKEND: data.address: expected "IP:PORT", got {json.dumps(bad)}')


def test_address_error_text_matches_the_contract_example():
    text = error_of({"type": "ADD_BACKEND",
                     "data": {"app_id": "MyApp", "backend_id": "b1", "address": "foo"}})
    assert text.startswith('ADD_BACKEND: data.address: expected "IP:PORT", got "foo"')


@pytest.mark.parametrize("given,normal", [
    ("Example.COM", "example.com"),
    ("*.Example.com", "*.example.com"),
    ("a-b_c.d1", "a-b_c.d1"),
    ("localhost", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
    ("[::1]", "[::1]"),
    ("bücher.de", "xn--bcher-kva.de"),
])
def test_hostnames_are_normalised(given, normal):
    data = {"app_id": "A", "address": "127.0.0.1:80", "hostname": given}
    assert order("ADD_HTTP_FRONT", data).data["hostname"] == normal


@pytest.mark.parametrize("bad", [
    "", "*", "*.", "a.*.b", "**.a", "a..b", ".a", "a.", "-a.b", "a b", "a:80", "a/b",
    "x" * 64 + ".com", ("a." * 127) + "com", 3, None, ["a"],
])
def test_bad_hostnames_are_refused(bad):
    text = error_of({"type": "ADD_HTTP_FRONT",
                     "data": {"app_id": "A", "address": "127.0.0.1:80", "hostname": bad}})
    assert text.startswith("ADD_HTTP_FRONT: data.hostname: expected a host name")


@pytest.mark.parametrize("path,ok", [
    ("", True), ("/", True), ("/api/v1", True), ("/a?b=c", True), ("api", False),
    ("/a b", False), ("/a\n", False), ("/caf\u00e9", False), (None, False),
])
def test_path_begin(path, ok):
    data = {"app_id": "A", "address": "127.0.0.1:80", "hostname": "a.b", "path_begin": path}
    if ok:
        assert order("ADD_HTTP_FRONT", data).data["path_begin"] == path
    else:
        assert "data.path_begin: expected" in error_of({"type": "ADD_HTTP_FRONT", "data": data})


@pytest.mark.parametrize("given,normal", [
    ("roundrobin", "RoundRobin"), ("random", "Random"),
    ("leastconnections", "LeastConnections"), ("poweroftwo", "PowerOfTwo"),
    ("RoundRobin", "RoundRobin"), ("LeastConnections", "LeastConnections"),
    ("least_connections", "LeastConnections"), ("power-of-two", "PowerOfTwo"),
])
def test_policy_spellings(given, normal):
    o = order("ADD_APPLICATION", {"app_id": "A", "load_balancing_policy": given})
    assert o.data["load_balancing_policy"] == normal


def test_application_fields():
    o = order("ADD_APPLICATION", {"app_id": "A", "sticky_session": True, "https_redirect": True,
                                  "proxy_protocol": "SendHeader", "answer_503": "HTTP/1.1 503\r\n\r\n"})
    assert o.data["proxy_protocol"] == "SendHeader" and o.data["sticky_session"] is True


def test_backend_fields():
    o = order("ADD_BACKEND", {"app_id": "A", "backend_id": "b", "address": "10.0.0.1:80",
                              "sticky_id": "s1", "load_balancing_parameters": {},
                              "backup": True})
    assert o.data["load_balancing_parameters"] == {"weight": 100}
    assert o.data["sticky_id"] == "s1" and o.data["backup"] is True
    o = order("ADD_BACKEND", {"app_id": "A", "backend_id": "b", "address": "10.0.0.1:80",
                              "load_balancing_parameters": {"weight": 0}})
    assert o.data["load_balancing_parameters"] == {"weight": 0}


def test_https_listener_versions_and_fingerprints():
    o = order("ADD_HTTPS_LISTENER", {"front": "127.0.0.1:443",
                                     "versions": ["tlsv1.3", "TLSv1.2", "TLSv1.3"],
                                     "cipher_list": "ECDHE+AESGCM"})
    assert o.data["versions"] == ["TLSv1.2", "TLSv1.3"]
    o = order("REMOVE_CERTIFICATE", {"front": "127.0.0.1:443",
                                     "fingerprint": ":".join(["AB"] * 32)})
    assert o.data["fingerprint"] == "ab" * 32


def test_certificate_names_are_hostnames_deduplicated():
    o = order("ADD_CERTIFICATE", {"front": "127.0.0.1:443",
                                  "certificate": {"certificate": "C", "key": "K"},
                                  "names": ["A.com", "*.a.com", "a.com"]})
    assert o.data["names"] == ["a.com", "*.a.com"]


ERRORS = [
    ({"type": "NOPE", "data": {}}, 'order: type: unknown order type "NOPE"'),
    ({"data": {}}, "order: type: missing required field"),
    ({"type": 3}, "order: type: unknown order type 3"),
    ([], "order: expected an object, got []"),
    ({"type": "STATUS", "extra": 1}, "STATUS: extra: unknown field"),
    ({"type": "ADD_APPLICATION"}, "ADD_APPLICATION: data: expected an object, got null"),
    ({"type": "ADD_APPLICATION", "data": {}}, "ADD_APPLICATION: data.app_id: missing required"),
    ({"type": "ADD_APPLICATION", "data": {"app_id": "A", "colour": "red"}},
     "ADD_APPLICATION: data.colour: unknown field"),
    ({"type": "ADD_APPLICATION", "data": {"app_id": ""}},
     "ADD_APPLICATION: data.app_id: expected a non-empty string"),
    ({"type": "ADD_APPLICATION", "data": {"app_id": "a\nb"}},
     "ADD_APPLICATION: data.app_id: expected a non-empty string"),
    ({"type": "ADD_APPLICATION", "data": {"app_id": "A", "sticky_session": 1}},
     "ADD_APPLICATION: data.sticky_session: expected a boolean, got 1"),
    ({"type": "ADD_APPLICATION", "data": {"app_id": "A", "load_balancing_policy": "fastest"}},
     'ADD_APPLICATION: data.load_balancing_policy: expected one of "RoundRobin"'),
    ({"type": "ADD_APPLICATION", "data": {"app_id": "A", "proxy_protocol": "v2"}},
     'ADD_APPLICATION: data.proxy_protocol: expected one of "ExpectHeader"'),
    ({"type": "REMOVE_APPLICATION", "data": {"app_id": "A"}},
     "REMOVE_APPLICATION: data: expected a non-empty string"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": "1.2.3.4:5",
                                      "load_balancing_parameters": {"weight": True}}},
     "ADD_BACKEND: data.load_balancing_parameters.weight: expected an integer 0..1000, got true"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": "1.2.3.4:5",
                                      "load_balancing_parameters": {"weight": 1001}}},
     "ADD_BACKEND: data.load_balancing_parameters.weight: expected an integer 0..1000, got 1001"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": "1.2.3.4:5",
                                      "load_balancing_parameters": {"weight": 1.5}}},
     "ADD_BACKEND: data.load_balancing_parameters.weight: expected an integer 0..1000, got 1.5"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": "1.2.3.4:5",
                                      "load_balancing_parameters": {"w": 1}}},
     "ADD_BACKEND: data.load_balancing_parameters.w: unknown field"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": "1.2.3.4:5",
                                      "sticky_id": "a;b"}},
     "ADD_BACKEND: data.sticky_id: expected a cookie value"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "address": "1.2.3.4:5"}},
     "ADD_BACKEND: data.backend_id: missing required field"),
    ({"type": "ADD_BACKEND", "data": {"app_id": "A", "backend_id": "b", "address": 8080}},
     'ADD_BACKEND: data.address: expected "IP:PORT", got 8080'),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "front_timeout": 0}},
     "ADD_HTTP_LISTENER: data.front_timeout: expected an integer >= 1, got 0"),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "request_timeout": False}},
     "ADD_HTTP_LISTENER: data.request_timeout: expected an integer >= 1, got false"),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "sticky_name": "a=b"}},
     "ADD_HTTP_LISTENER: data.sticky_name: expected a cookie name"),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "versions": ["TLSv1.2"]}},
     "ADD_HTTP_LISTENER: data.versions: unknown field"),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "public_address": "x"}},
     'ADD_HTTP_LISTENER: data.public_address: expected "IP:PORT", got "x"'),
    ({"type": "ADD_TCP_LISTENER", "data": {"front": "1.2.3.4:5", "request_timeout": 3}},
     "ADD_TCP_LISTENER: data.request_timeout: unknown field"),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "versions": ["TLSv1.1"]}},
     "ADD_HTTPS_LISTENER: data.versions[0]: TLSv1.1 is refused"),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "versions": ["TLSv9"]}},
     'ADD_HTTPS_LISTENER: data.versions[0]: expected "TLSv1.2" or "TLSv1.3", got "TLSv9"'),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "versions": []}},
     "ADD_HTTPS_LISTENER: data.versions: expected a non-empty list"),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "alpn": ["h2", "h2"]}},
     'ADD_HTTPS_LISTENER: data.alpn: expected a non-empty list among "h2", "http/1.1", without repeats'),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "alpn": ["spdy/3"]}},
     'ADD_HTTPS_LISTENER: data.alpn: expected a non-empty list among "h2", "http/1.1"'),
    ({"type": "ADD_HTTPS_LISTENER", "data": {"front": "1.2.3.4:5", "http2_max_concurrent_streams": 0}},
     "ADD_HTTPS_LISTENER: data.http2_max_concurrent_streams: expected an integer 1..1000"),
    ({"type": "ADD_HTTP_LISTENER", "data": {"front": "1.2.3.4:5", "alpn": ["h2"]}},
     "ADD_HTTP_LISTENER: data.alpn: unknown field"),
    ({"type": "REMOVE_LISTENER", "data": {"front": "1.2.3.4:5", "proxy": "UDP"}},
     'REMOVE_LISTENER: data.proxy: expected one of "HTTP", "HTTPS", "TCP", got "UDP"'),
    ({"type": "REMOVE_LISTENER", "data": {"front": "1.2.3.4:5"}},
     "REMOVE_LISTENER: data.proxy: missing required field"),
    ({"type": "ADD_CERTIFICATE", "data": {"front": "1.2.3.4:5",
                                          "certificate": {"certificate": "C"}}},
     "ADD_CERTIFICATE: data.certificate.key: missing required field"),
    ({"type": "ADD_CERTIFICATE", "data": {"front": "1.2.3.4:5", "certificate": {
        "certificate": "C", "key": "K", "certificate_chain": ["x", 2]}}},
     "ADD_CERTIFICATE: data.certificate.certificate_chain[1]: expected a non-empty string"),
    ({"type": "ADD_CERTIFICATE", "data": {"front": "1.2.3.4:5", "names": ["a", "b c"],
                                          "certificate": {"certificate": "C", "key": "K"}}},
     "ADD_CERTIFICATE: data.names[1]: expected a host name"),
    ({"type": "REMOVE_CERTIFICATE", "data": {"front": "1.2.3.4:5", "fingerprint": "abc"}},
     "REMOVE_CERTIFICATE: data.fingerprint: expected a SHA-256 fingerprint"),
    ({"type": "SOFT_STOP", "data": {}}, "SOFT_STOP: data: expected no data"),
    ({"type": "METRICS", "data": "RESET"}, 'METRICS: data: expected one of "ENABLE"'),
    ({"type": "LOGGING", "data": ""}, "LOGGING: data: expected a non-empty string"),
    ({"type": "LOGGING"}, "LOGGING: data: expected a non-empty string, got null"),
    ({"type": "QUERY", "data": {"type": "WORKERS"}},
     "QUERY: data.type: expected one of APPLICATIONS_HASHES, APPLICATIONS, CERTIFICATES"),
    ({"type": "QUERY", "data": {}}, "QUERY: data.type: missing required field"),
    ({"type": "QUERY", "data": {"type": "APPLICATIONS_HASHES", "x": 1}},
     "QUERY: data.x: unknown field"),
    ({"type": "QUERY", "data": {"type": "CERTIFICATES", "data": {"type": "ALL"}}},
     "QUERY: data.data: expected no data"),
    ({"type": "QUERY", "data": {"type": "APPLICATIONS", "data": {"type": "APP_ID"}}},
     "QUERY: data.data.data: expected a non-empty string"),
    ({"type": "QUERY", "data": {"type": "APPLICATIONS", "data": {"type": "HOST"}}},
     "QUERY: data.data.type: expected one of APP_ID, DOMAIN"),
    ({"type": "QUERY", "data": {"type": "APPLICATIONS",
                                "data": {"type": "DOMAIN", "data": {"hostname": "a b"}}}},
     "QUERY: data.data.data.hostname: expected a host name"),
]


@pytest.mark.parametrize("obj,expected", ERRORS)
def test_errors_name_the_field(obj, expected):
    assert error_of(obj).startswith(expected)


def test_message_error_is_a_value_error():
    assert issubclass(MessageError, ValueError)
    assert issubclass(FrameTooLarge, MessageError)


# --- requests and answers ---------------------------------------------------------------------

def test_proxy_request_holds_a_validated_order():
    obj = {"id": "r1", "version": 0, "type": "PROXY",
           "data": {"type": "REMOVE_APPLICATION", "data": "A"}, "worker_id": 2}
    request = Request.from_json(obj)
    assert request == Request("r1", "PROXY", Order("REMOVE_APPLICATION", "A"), 2, 0)
    assert request.to_json() == obj
    assert Request.from_json(request.to_json()) == request


@pytest.mark.parametrize("kind,data", [
    ("SAVE_STATE", {"path": "/tmp/s"}), ("LOAD_STATE", {"path": "s.json"}), ("DUMP_STATE", None),
    ("LIST_WORKERS", None), ("UPGRADE_MASTER", None), ("UPGRADE_WORKER", 3),
    ("SUBSCRIBE_EVENTS", None),
    ("PROVIDER_REPORT", {"provider": "etcd", "pid": 12, "refused": [
        {"key": "/sozu/applications/a", "reason": "the value is not JSON"}]}),
])
def test_request_types(kind, data):
    obj = {"id": "x", "type": kind}
    if data is not None:
        obj["data"] = data
    request = Request.from_json(obj)
    assert request == Request("x", kind, data)
    assert request.to_json() == {"version": 0, **obj}
    assert Request.from_json(request.to_json()) == request


@pytest.mark.parametrize("obj,expected", [
    ("x", "request: expected an object"),
    ({"type": "DUMP_STATE"}, "request: id: missing required field"),
    ({"id": 1, "type": "DUMP_STATE"}, "request: id: expected a string, got 1"),
    ({"id": "x"}, "request: type: missing required field"),
    ({"id": "x", "type": "REBOOT"}, 'request: type: unknown request type "REBOOT"'),
    ({"id": "x", "type": "DUMP_STATE", "extra": 1}, "request: extra: unknown field"),
    ({"id": "x", "type": "DUMP_STATE", "version": "0"}, "request: version: expected an integer"),
    ({"id": "x", "type": "DUMP_STATE", "worker_id": True}, "request: worker_id: expected an int"),
    ({"id": "x", "type": "DUMP_STATE", "data": {}}, "request: data: expected no data"),
    ({"id": "x", "type": "SAVE_STATE"}, "request: data: expected an object, got null"),
    ({"id": "x", "type": "SAVE_STATE", "data": {"path": ""}},
     "request: data.path: expected a non-empty string"),
    ({"id": "x", "type": "SAVE_STATE", "data": {"file": "a"}}, "request: data.file: unknown"),
    ({"id": "x", "type": "UPGRADE_WORKER", "data": "1"}, "request: data: expected an integer"),
    ({"id": "x", "type": "UPGRADE_WORKER"}, "request: data: expected an integer >= 0, got null"),
    ({"id": "x", "type": "PROXY"}, "request: data: expected an order, got null"),
    ({"id": "x", "type": "PROVIDER_REPORT", "data": {"provider": "consul", "pid": 1, "refused": []}},
     'request: data.provider: expected one of "etcd"'),
    ({"id": "x", "type": "PROVIDER_REPORT", "data": {"provider": "etcd", "pid": 1,
                                                     "refused": [{"key": "/sozu/x"}]}},
     "request: data.refused[0].reason: missing required field"),
    ({"id": "x", "type": "PROXY", "data": {"type": "ADD_BACKEND", "data": {
        "app_id": "MyApp", "backend_id": "b1", "address": "foo"}}},
     'ADD_BACKEND: data.address: expected "IP:PORT", got "foo"'),
])
def test_request_errors(obj, expected):
    with pytest.raises(MessageError) as info:
        Request.from_json(obj)
    assert str(info.value).startswith(expected)


def test_request_error_carries_the_id_when_readable():
    with pytest.raises(MessageError) as info:
        Request.from_json({"id": "abc", "type": "NOPE"})
    assert info.value.id == "abc"
    with pytest.raises(MessageError) as info:
        Request.from_json({"id": 7, "type": "NOPE"})
    assert info.value.id is None


@pytest.mark.parametrize("message, expected", [
    ({"id": "abc"}, "abc"), ({"id": 7}, 7), ({"id": -2.5}, -2.5),
    ({"id": float("inf")}, ""), ({"id": float("-inf")}, ""), ({"id": float("nan")}, ""),
    ({"id": True}, ""), ({"id": None}, ""), ({"id": [1]}, ""), ({"id": {"a": 1}}, ""),
    ({}, ""), ([1, 2], ""), (MessageError("not JSON"), ""),
])
def test_an_error_answer_repeats_only_an_id_it_can_encode(message, expected):
    assert answer_id(message) == expected
    encode({"id": answer_id(message)})  # never raises


def test_answers_have_the_protocol_shape():
    assert answer("1", "OK") == {"id": "1", "version": 0, "status": "OK", "message": "", "data": None}
    assert answer(7, "ERROR", "bad", {"a": 1}) == {"id": 7, "version": 0, "status": "ERROR",
                                                    "message": "bad", "data": {"a": 1}}
    assert encode(answer("3", "PROCESSING", "more")).endswith(b"\0")


# --- framing ----------------------------------------------------------------------------------

def test_encode_is_compact_utf8_with_nul():
    assert encode({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode() + b"\0"
    assert encode({"a": "x\0y"}) == b'{"a":"x\\u0000y"}\0'
    # A lone surrogate (from a "\ud800" escape in a client's message) stays escaped.
    assert encode({"a": "\ud800"}) == b'{"a":"\\ud800"}\0'


def test_decoder_splits_and_reassembles():
    decoder = Decoder(1000)
    assert decoder.feed(b'{"a":1}\0{"b"') == [{"a": 1}]
    assert decoder.feed(b":2") == []
    assert decoder.feed(b"}\0\0\n\0 \0" + b'{"c":3}\n\0') == [{"b": 2}, {"c": 3}]
    assert decoder.feed(b"") == []


def test_decoder_reports_bad_messages_in_place():
    out = Decoder(1000).feed(b'[1]\0{"ok":1}\0\xff\xfe\0{bad\0"s"\0NaN\0{"x":NaN}\0{"z":0}\0')
    assert out[1] == {"ok": 1} and out[-1] == {"z": 0}
    errors = [m for m in out if isinstance(m, MessageError)]
    assert len(out) == 8 and len(errors) == 6
    assert "expected a JSON object, got [1]" in str(out[0])
    assert "UTF-8" in str(out[2])
    assert "not valid JSON" in str(out[3])


def test_decoder_refuses_lone_surrogates_but_not_pairs():
    lone, pair = Decoder(100).feed(b'{"a":"\\ud800"}\0{"a":"\\ud83d\\ude00"}\0')
    assert isinstance(lone, MessageError) and "surrogate" in str(lone)
    assert pair == {"a": "\U0001F600"}
    assert encode(pair) == '{"a":"\U0001F600"}'.encode() + b"\0"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b'{"a":1}', b"[2]", b"{x", b"\xff", b"", b"\n", b'"s"',
                                 b'{"b":"\xc3\xa9"}']), max_size=8),
       st.lists(st.integers(0, 80), max_size=6))
def test_decoder_results_do_not_depend_on_chunking(messages, cuts):
    stream = b"".join(m + b"\0" for m in messages)
    whole = Decoder(100).feed(stream)
    pieces, start = [], 0
    for cut in sorted(cuts) + [len(stream)]:
        pieces.append(stream[start:max(start, cut)])
        start = max(start, cut)
    decoder = Decoder(100)
    chunked = [m for piece in pieces for m in decoder.feed(piece)]

    def shape(items):
        return [m if isinstance(m, dict) else type(m) for m in items]
    assert shape(chunked) == shape(whole)
    assert len(whole) == sum(1 for m in messages if m.strip())


def test_decoder_survives_deep_nesting():
    [message] = Decoder(10**6).feed(b"[" * 100000 + b"]" * 100000 + b"\0")
    assert isinstance(message, MessageError)


def test_decoder_refuses_oversize_pending_bytes():
    decoder = Decoder(10)
    assert decoder.feed(b"0123456789") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"a")


def test_decoder_refuses_oversize_complete_message_keeping_earlier_ones():
    decoder = Decoder(10)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(b'{"a":1}\0' + b'{"a":"0123456789"}\0')
    assert info.value.messages == [{"a": 1}]


def test_decoder_accepts_exactly_max_size():
    assert Decoder(7).feed(b'{"a":1}\0') == [{"a": 1}]


# --- saved state ------------------------------------------------------------------------------

SAVED = [order("ADD_APPLICATION", {"app_id": "A"}),
         order("ADD_BACKEND", {"app_id": "A", "backend_id": "b", "address": "127.0.0.1:1"})]


def test_dump_orders_is_sozu_format():
    dumped = dump_orders(SAVED)
    lines = dumped.split(b"\n\0")
    assert lines[-1] == b"" and len(lines) == 3
    first = json.loads(lines[0])
    assert first == {"id": "SAVE-0", "version": 0, "type": "PROXY", "data": SAVED[0].to_json()}
    assert json.loads(lines[1])["id"] == "SAVE-1"
    assert dump_orders([]) == b""


def test_load_orders_accepts_every_separator():
    blobs = [json.dumps(Request(f"S{i}", "PROXY", o).to_json()).encode()
             for i, o in enumerate(SAVED)]
    for sep in (b"\n\0", b"\0", b"\n", b"\n\n", b" ", b"\r\n\0\0"):
        assert load_orders(sep.join(blobs) + sep) == SAVED
    assert load_orders(dump_orders(SAVED)) == SAVED
    assert load_orders(b"") == [] and load_orders(b"\n\0\n") == []


def test_saved_state_is_readable_by_the_decoder_too():
    messages = Decoder(10**6).feed(dump_orders(SAVED))
    assert [Request.from_json(m).data for m in messages] == SAVED


@pytest.mark.parametrize("data,expected", [
    (b'{"id":"a","type":"PROXY","data":{"type":"STATUS"}}\n\0',
     "saved state: message 0: STATUS is not a state order"),
    (dump_orders(SAVED) + b'{"id":"a","type":"DUMP_STATE"}\n\0',
     "saved state: message 2: expected a PROXY request, got DUMP_STATE"),
    (dump_orders(SAVED) + b"{oops\n\0", "saved state: message 2: not valid JSON"),
    (dump_orders(SAVED[:1]) + b'{"id":"a","type":"PROXY","data":{"type":"ADD_APPLICATION"}}',
     "saved state: message 1: ADD_APPLICATION: data: expected an object"),
    (b"\xff", "saved state: not valid UTF-8"),
    (b"[1]", "saved state: message 0: request: expected an object"),
])
def test_load_orders_errors_name_the_message(data, expected):
    with pytest.raises(MessageError) as info:
        load_orders(data)
    assert str(info.value).startswith(expected)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.floats(allow_nan=False)
    | st.sampled_from(["", "A", "127.0.0.1:80", "[::1]:1", "a.com", "HTTP", "/", "ab" * 32,
                       "APPLICATIONS", "APP_ID", "DOMAIN", "enable"]) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "data", "app_id", "hostname", "front", "proxy", "id",
                         "path", "certificate", "key", "x"]), children, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(STATE_ORDERS | COMMAND_ORDERS) + ["PROXY", "NOPE"]), JSON)
def test_arbitrary_json_is_an_order_or_a_message_error(kind, data):
    try:
        o = Order.from_json({"type": kind, "data": data})
    except MessageError:
        return
    assert Order.from_json(json.loads(json.dumps(o.to_json()))) == o


@settings(max_examples=300, deadline=None)
@given(JSON, st.sampled_from(["PROXY", "SAVE_STATE", "UPGRADE_WORKER", "DUMP_STATE"]))
def test_arbitrary_json_is_a_request_or_a_message_error(data, kind):
    try:
        request = Request.from_json({"id": "x", "type": kind, "data": data})
    except MessageError:
        return
    assert Request.from_json(json.loads(json.dumps(request.to_json()))) == request


@pytest.mark.parametrize("check,error", [
    ({"interval": 1, "timeout": 2}, "data.health_check.timeout: expected at most the interval"),
    ({"interval": 0}, "data.health_check.interval: expected a number of seconds 0.1..3600"),
    ({"interval": True}, "data.health_check.interval: expected a number of seconds"),
    ({"protocol": "udp"}, 'data.health_check.protocol: expected one of "http", "tcp"'),
    ({"method": "G T"}, 'data.health_check.method: expected an HTTP method like "GET"'),
    ({"path": "health"}, 'data.health_check.path: expected a path starting with "/"'),
    ({"expected_statuses": [200, 600]}, "data.health_check.expected_statuses[1]: expected an integer"),
    ({"rise": 0}, "data.health_check.rise: expected an integer 1..100"),
    ({"colour": "red"}, "data.health_check.colour: unknown field"),
    ({"host": "not a host"}, "data.health_check.host: expected a host name"),
])
def test_health_checks_are_strict(check, error):
    with pytest.raises(MessageError) as info:
        Order.from_json({"type": "SET_HEALTH_CHECK", "data": {"app_id": "A", "health_check": check}})
    assert str(info.value).startswith(f"SET_HEALTH_CHECK: {error}")


def test_health_check_statuses_are_sorted_and_unique():
    o = order("SET_HEALTH_CHECK", {"app_id": "A", "health_check": {"expected_statuses": [204, 200, 204]}})
    assert o.data["health_check"]["expected_statuses"] == [200, 204]
    assert order("SET_HEALTH_CHECK", {"app_id": "A"}).data == {"app_id": "A", "health_check": None}


# --- frontend rules (docs/routing.md) ---------------------------------------------------------

FRONT = {"app_id": "A", "address": "127.0.0.1:8080", "hostname": "a.com"}


def test_front_rules_normal_form():
    plain = order("ADD_HTTP_FRONT", FRONT)
    assert plain.data == {**FRONT, "path_begin": ""}  # no rule: Sozu 0.11's shape
    prefix = order("ADD_HTTP_FRONT", {**FRONT, "path": {"value": "/api"}})
    assert prefix.data == {**FRONT, "path_begin": "/api"}
    full = order("ADD_HTTP_FRONT", {
        **FRONT, "path": {"kind": "regex", "value": "^/u/(?P<id>[0-9]+)$"}, "methods": ["post", "GET", "get"],
        "redirect": {"status": 308, "host": "B.com:8443"},
        "rewrite": {"path_regex": "^/u/(?P<id>[0-9]+)$", "path_replacement": r"/user/\g<id>"},
        "request_headers": [{"action": "add", "name": "X-A", "value": "1"}], "response_headers": []})
    assert full.data["path"] == {"kind": "REGEX", "value": "^/u/(?P<id>[0-9]+)$"}
    assert full.data["methods"] == ["GET", "POST"]
    assert full.data["redirect"] == {"status": 308, "scheme": None, "host": "b.com:8443", "port": None,
                                     "path": None, "query": None}
    assert full.data["request_headers"] == [{"action": "ADD", "name": "X-A", "value": "1"}]
    assert "response_headers" not in full.data
    assert Order.from_json(full.to_json()) == full


@pytest.mark.parametrize("fields, message", [
    ({"path": {"kind": "REGEX", "value": "(?u)x"}}, "data.path.value: bad regular expression"),  # bytes
    ({"path": {"kind": "EQUALS", "value": "no-slash"}}, "data.path.value: expected a path"),
    ({"path_begin": "/a", "path": {"kind": "EQUALS", "value": "/a"}}, "data.path: give either"),
    ({"methods": ["G E T"]}, "data.methods[0]: expected an HTTP method"),
    ({"redirect": {"scheme": "ftp"}}, "data.redirect.scheme"),
    ({"redirect": {"host": "a.com:"}}, "data.redirect.host"),
    ({"redirect": {"path": "/a b"}}, "data.redirect.path"),
    ({"redirect": {"query": "?a"}}, "data.redirect.query"),
    ({"rewrite": {"path_regex": "^/a"}}, "data.rewrite.path_replacement: path_regex and path_replacement go together"),
    ({"rewrite": {"path_regex": "(?P<a>x)", "path_replacement": r"\g<b>"}}, "data.rewrite.path_replacement: bad"),
    ({"request_headers": [{"action": "SET", "name": "Host", "value": "b"}]}, "use rewrite.host"),
    ({"request_headers": [{"action": "SET", "name": "Sozu-Id", "value": "b"}]}, "set by sozu itself"),
    ({"response_headers": [{"action": "REMOVE", "name": "Server", "value": "x"}]}, "a REMOVE edit has no value"),
    ({"response_headers": [{"action": "SET", "name": "Proxy-Authenticate", "value": "x"}]}, "hop-by-hop"),
    ({"response_headers": [{"action": "SET", "name": "X-A", "value": " x"}]}, "surrounding spaces"),
])
def test_bad_front_rules_name_their_field(fields, message):
    with pytest.raises(MessageError) as error:
        Order.from_json({"type": "ADD_HTTP_FRONT", "data": {**FRONT, **fields}})
    assert message in str(error.value)
