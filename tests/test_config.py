"""sozu.config: the TOML file -> Config -> the first orders.

Most tests parse a text as if it were `tests/data/config/test.toml`, so that relative paths name
the fixtures beside it (answer pages, a test CA, certificates and keys valid until 2126).
"""
from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sozu import address, config
from sozu.config import ConfigError, load, parse
from sozu.messages import health_check
from tests.test_address import REFUSED as ADDRESSES_REFUSED
from sozu.messages import Order

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "config"
PATH = str(DATA / "test.toml")                 # never read: parse() only names it
HEAD = 'command_socket = "./sozu.sock"\n'
LISTENERS = """
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
[[listeners]]
protocol = "https"
address = "127.0.0.1:8443"
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:8081"
"""


def pem(name: str) -> str:
    return (DATA / name).read_bytes().decode()


def cfg(text: str = "", listeners: bool = True) -> config.Config:
    return parse(HEAD + text + (LISTENERS if listeners else ""), PATH)


def fails(text: str, listeners: bool = True, head: str = HEAD) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(head + text + (LISTENERS if listeners else ""), PATH)
    message = str(info.value)
    assert "\n" not in message and message.startswith(PATH + ": "), message
    return info.value


def app(frontends: str = "", backends: str = "", extra: str = "", name: str = "MyApp") -> str:
    return f"[applications.{name}]\n{extra}\nfrontends = [{frontends}]\nbackends = [{backends}]\n"


def orders_of(text: str, kind: str) -> list[dict]:
    return [o.data for o in cfg(text).to_orders() if o.type == kind]


# --- messages, verbatim ---------------------------------------------------------------------------

def test_message_wrong_type_names_file_key_value_and_expectation():
    assert str(fails('worker_count = "2"\n')) == (
        f'{PATH}: worker_count: wrong type (got "2", expected an integer 1..64)')


def test_message_toml_bool_is_not_an_integer():
    assert str(fails("worker_count = true\n")) == (
        f"{PATH}: worker_count: wrong type (got true, expected an integer 1..64)")


def test_message_out_of_range():
    assert str(fails("max_connections = 0\n")) == (
        f"{PATH}: max_connections: out of range (got 0, expected an integer 1..1_000_000)")


def test_message_unknown_key_has_dotted_path_and_suggestion():
    error = fails(app('{ address = "127.0.0.1:8080", hostnme = "a.com" }'))
    assert error.key == "applications.MyApp.frontends[0].hostnme"
    assert str(error) == (
        f"{PATH}: applications.MyApp.frontends[0].hostnme: unknown key, did you mean hostname? "
        "(expected one of address, hostname, path_begin, path, path_type, methods, redirect, rewrite, "
        "request_headers, response_headers, certificate, key, certificate_chain)")


def test_message_host_name_instead_of_address():
    error = fails('[[listeners]]\nprotocol = "http"\naddress = "localhost:8080"\n', listeners=False)
    assert str(error) == (f'{PATH}: listeners[0].address: not a numeric address '
                          f'(got "localhost:8080", expected a numeric IP:PORT; sozu never resolves names)')


def test_message_missing_certificate_names_key_and_path():
    error = fails(app('{ address = "127.0.0.1:8443", hostname = "a.com", certificate = "missing.pem",'
                      ' key = "key.pem" }'))
    assert str(error) == (
        f"{PATH}: applications.MyApp.frontends[0].certificate: cannot read {DATA}/missing.pem: "
        f'No such file or directory (got "missing.pem", expected a PEM certificate file)')


def test_message_missing_required_key():
    assert str(fails("", head="")) == (
        f"{PATH}: command_socket: missing required key (expected a path (relative to the config file's directory))")


def test_message_long_values_are_shortened_on_one_line():
    error = fails(f'log_target = "{"x" * 200}\\nsecond line"\n')
    assert len(str(error)) < 400 and "..." in str(error)


# --- top-level keys -------------------------------------------------------------------------------

def test_defaults():
    c = cfg(listeners=False)
    assert c.path == PATH and c.command_socket == str(DATA / "sozu.sock")
    assert (c.saved_state, c.automatic_state_save, c.log_level, c.log_target, c.log_access_target) == (
        None, False, "info", "stdout", "stdout")
    assert (c.worker_count, c.worker_automatic_restart, c.max_connections, c.buffer_size) == (2, True, 10000, 16384)
    assert (c.front_timeout, c.back_timeout, c.connect_timeout, c.request_timeout) == (60, 30, 3, 10)
    assert (c.pid_file_path, c.user, c.group, c.chroot) == (None, "nobody", "nogroup", None)
    assert (c.ctl_command_timeout, c.worker_heartbeat_timeout, c.shutdown_grace_period,
            c.max_command_message_size) == (1000, 10, 30, 1_000_000)
    assert c.listeners == () and c.applications == () and c.to_orders() == []


def test_every_top_level_key():
    c = cfg("""
saved_state = "state/s.json"
automatic_state_save = true
log_level = "debug,sozu.http=trace"
log_target = "stderr"
log_access_target = "off"
worker_count = 64
worker_automatic_restart = false
max_connections = 1_000_000
buffer_size = 1024
front_timeout = 1
back_timeout = 2
connect_timeout = 4
request_timeout = 5
pid_file_path = "/run/sozu.pid"
user = "sozu"
group = "1000"
chroot = "/var/empty"
ctl_command_timeout = 250
worker_heartbeat_timeout = 7
shutdown_grace_period = 8
max_command_message_size = 4096
""", listeners=False)
    assert c.saved_state == str(DATA / "state" / "s.json") and c.automatic_state_save
    assert (c.log_level, c.log_target, c.log_access_target) == ("debug,sozu.http=trace", "stderr", "off")
    assert (c.worker_count, c.worker_automatic_restart, c.max_connections, c.buffer_size) == (
        64, False, 1_000_000, 1024)
    assert (c.front_timeout, c.back_timeout, c.connect_timeout, c.request_timeout) == (1, 2, 4, 5)
    assert (c.pid_file_path, c.user, c.group, c.chroot) == ("/run/sozu.pid", "sozu", "1000", "/var/empty")
    assert (c.ctl_command_timeout, c.worker_heartbeat_timeout, c.shutdown_grace_period,
            c.max_command_message_size) == (250, 7, 8, 4096)


@pytest.mark.parametrize("key, good, bad", [
    ("worker_count", (1, 64), (0, 65)),
    ("max_connections", (1, 1_000_000), (0, 1_000_001)),
    ("buffer_size", (1024, 1_048_576), (1023, 1_048_577)),
    ("front_timeout", (1, 86_400), (0, -1, 86_401)),
    ("back_timeout", (1,), (0,)),
    ("connect_timeout", (1,), (0,)),
    ("request_timeout", (1,), (0,)),
    ("ctl_command_timeout", (1,), (0,)),
    ("worker_heartbeat_timeout", (1,), (0,)),
    ("shutdown_grace_period", (1,), (0,)),
    ("max_command_message_size", (4096,), (4095,)),
])
def test_integer_ranges(key, good, bad):
    for value in good:
        assert getattr(cfg(f"{key} = {value}\n"), key) == value
    for value in bad:
        error = fails(f"{key} = {value}\n")
        assert error.key == key and "out of range" in str(error)


@pytest.mark.parametrize("line, key", [
    ('worker_count = "2"', "worker_count"),
    ("worker_count = 2.0", "worker_count"),
    ("buffer_size = false", "buffer_size"),
    ("front_timeout = 1979-05-27", "front_timeout"),
    ('automatic_state_save = "yes"', "automatic_state_save"),
    ("worker_automatic_restart = 1", "worker_automatic_restart"),
    ("command_socket2 = 1", "command_socket2"),
    ("log_level = 3", "log_level"),
    ("user = 1000", "user"),
    ('user = ""', "user"),
    ('group = "a b"', "group"),
    ("chroot = false", "chroot"),
    ('pid_file_path = ""', "pid_file_path"),
    ("listeners = 3", "listeners"),
    ("listeners = [1]", "listeners[0]"),
    ("applications = []", "applications"),
    ("metrics = 3", "metrics"),
    ("metrics = { colour = 1 }", "metrics.colour"),
    ('metrics = { prometheus = "localhost:9180" }', "metrics.prometheus"),
    ('metrics = { address = "0.0.0.0:8125" }', "metrics.address"),
    ('metrics = { prefix = "a b" }', "metrics.prefix"),
    ("metrics = { tagged_metrics = 1 }", "metrics.tagged_metrics"),
    ("metrics = { flush_interval = 0 }", "metrics.flush_interval"),
    ("sandbox = true", "sandbox"),
    ("sandbox = { seccomp = 1 }", "sandbox.seccomp"),
    ('sandbox = { seccomp_action = "trap" }', "sandbox.seccomp_action"),
    ("sandbox = { secomp = false }", "sandbox.secomp"),
])
def test_wrong_types_and_unknown_keys(line, key):
    assert fails(line + "\n", listeners=False).key == key


def test_command_socket_required_and_not_too_long():
    assert fails("", head="").key == "command_socket"
    error = fails(f'command_socket = "/{"s" * 120}.sock"\n', head="")
    assert error.key == "command_socket" and "too long for a unix socket" in str(error)


def test_automatic_state_save_needs_saved_state():
    error = fails("automatic_state_save = true\n")
    assert error.key == "automatic_state_save" and "needs saved_state" in str(error)


def test_relative_paths_resolve_against_the_config_directory():
    c = parse('command_socket = "run/../sozu.sock"\nsaved_state = "/abs/state.json"\n'
              'pid_file_path = "./p.pid"\nchroot = "jail"\nlog_target = "file://logs/sozu.log"\n'
              'log_access_target = "file:///var/log/access.log"\n', "/etc/sozu/sozu.toml")
    assert c.path == "/etc/sozu/sozu.toml"
    assert c.command_socket == "/etc/sozu/sozu.sock"
    assert c.saved_state == "/abs/state.json"
    assert c.pid_file_path == "/etc/sozu/p.pid"
    assert c.chroot == "/etc/sozu/jail"
    assert c.log_target == "file:///etc/sozu/logs/sozu.log"
    assert c.log_access_target == "file:///var/log/access.log"


def test_relative_config_path_is_made_absolute():
    c = parse(HEAD, "relative/dir/sozu.toml")
    assert c.path == os.path.abspath("relative/dir/sozu.toml")
    assert c.command_socket == os.path.abspath("relative/dir/sozu.sock")


def test_sandbox_table_defaults_to_seccomp_kill():
    assert cfg("").sandbox == config.SandboxConfig(seccomp=True, seccomp_action="kill")
    assert cfg('[sandbox]\nseccomp_action = "eperm"\n').sandbox.seccomp_action == "eperm"
    assert cfg("sandbox = { seccomp = false }\n").sandbox.seccomp is False


def test_empty_chroot_means_none():
    assert cfg('chroot = ""\n').chroot is None


@pytest.mark.parametrize("value", ["info", "INFO", "off", "warn", "warning", "trace", "critical",
                                   "info,sozu.http=debug", "error, sozu.http = debug, sozu.access=off",
                                   "sozu.worker=debug"])
def test_log_level_valid(value):
    assert cfg(f'log_level = "{value}"\n').log_level == value


@pytest.mark.parametrize("value", ["", "verbose", "info,", "info,debug", "sozu http=debug", "=debug",
                                   "info,a=debug,a=info", "info;sozu=debug", "sozu.http=loud"])
def test_log_level_invalid(value):
    error = fails(f'log_level = "{value}"\n')
    assert error.key == "log_level" and f'got "{value}"' in str(error)


@pytest.mark.parametrize("key, value", [
    ("log_target", "off"), ("log_target", "syslog"), ("log_target", "file://"),
    ("log_target", "file:///var/log/"), ("log_access_target", "/var/log/a.log"),
    ("log_access_target", "OFF")])
def test_log_target_invalid(key, value):
    assert fails(f'{key} = "{value}"\n').key == key


# --- addresses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, normal", [
    ("127.0.0.1:8080", "127.0.0.1:8080"),
    ("0.0.0.0:1", "0.0.0.0:1"),
    ("10.0.0.1:65535", "10.0.0.1:65535"),
    ("127.0.0.1:08080", "127.0.0.1:8080"),
    ("[::1]:8080", "[::1]:8080"),
    ("[0:0:0:0:0:0:0:1]:80", "[::1]:80"),
    ("[2001:DB8::0:1]:443", "[2001:db8::1]:443"),
    ("[::]:80", "[::]:80"),
])
def test_address_normalised(given, normal):
    assert address.parse(given) == normal
    c = cfg(f'[[listeners]]\nprotocol = "tcp"\naddress = "{given}"\n', listeners=False)
    assert c.listeners[0].address == normal


@pytest.mark.parametrize("given, what", [(text, what) for text, what in ADDRESSES_REFUSED if text]
                         + [("", "empty string")])
def test_address_invalid(given, what):
    error = fails(f'[[listeners]]\nprotocol = "tcp"\naddress = "{given}"\n', listeners=False)
    assert error.key == "listeners[0].address" and what in str(error)


# --- listeners ------------------------------------------------------------------------------------

def test_listener_defaults_and_effective_timeouts():
    c = cfg("front_timeout = 7\nrequest_timeout = 9\n")
    http, https, tcp = c.listeners
    assert http == config.ListenerConfig(protocol="http", address="127.0.0.1:8080", front_timeout=7,
                                         request_timeout=9)
    assert https.tls_versions == ("TLSv1.2", "TLSv1.3") and https.cipher_list is None
    assert (https.alpn, https.http2_max_concurrent_streams) == (("h2", "http/1.1"), 100)
    assert http.alpn == ()
    assert https.sticky_name == "SOZUBALANCEID"
    assert (tcp.sticky_name, tcp.tls_versions, tcp.answer_404) == (None, (), None)
    assert tcp.front_timeout == 7


def test_listener_every_key():
    c = cfg("""
[[listeners]]
protocol = "https"
address = "[::1]:443"
answer_404 = "404.http"
answer_503 = "503.http"
expect_proxy = true
sticky_name = "SESSION"
tls_versions = ["TLSv1.3"]
cipher_list = "ECDHE+AESGCM:!aNULL"
alpn = ["http/1.1", "h2"]
http2_max_concurrent_streams = 7
front_timeout = 11
back_timeout = 12
connect_timeout = 13
request_timeout = 14
""", listeners=False)
    assert c.listeners == (config.ListenerConfig(
        protocol="https", address="[::1]:443", answer_404=pem("404.http"), answer_503=pem("503.http"),
        expect_proxy=True, sticky_name="SESSION", tls_versions=("TLSv1.3",),
        cipher_list="ECDHE+AESGCM:!aNULL", alpn=("http/1.1", "h2"), http2_max_concurrent_streams=7,
        front_timeout=11, back_timeout=12, connect_timeout=13,
        request_timeout=14),)


def test_tls_versions_take_the_spellings_orders_take():
    c = cfg('[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n'
            'tls_versions = ["tlsv1_3", "TLSv1.2"]\n', listeners=False)
    assert c.listeners[0].tls_versions == ("TLSv1.2", "TLSv1.3")


def test_h2c_prior_knowledge_on_an_http_listener():
    c = cfg('[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:9000"\n'
            "h2c_prior_knowledge = true\nhttp2_max_concurrent_streams = 7\n", listeners=False)
    (listener,) = c.listeners
    assert (listener.h2c_prior_knowledge, listener.http2_max_concurrent_streams) == (True, 7)
    order = c.to_orders()[0]
    assert order.type == "ADD_HTTP_LISTENER"
    assert (order.data["h2c_prior_knowledge"], order.data["http2_max_concurrent_streams"]) == (True, 7)
    assert Order.from_json(order.to_json()) == order
    # Off, the default: the order keeps Sozu 0.11's fields only.
    off = cfg('[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:9000"\n', listeners=False)
    assert not off.listeners[0].h2c_prior_knowledge
    assert "h2c_prior_knowledge" not in off.to_orders()[0].data


def test_tcp_listener_keys():
    c = cfg('[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:9000"\nexpect_proxy = true\n'
            "back_timeout = 5\n", listeners=False)
    assert c.listeners[0].expect_proxy and c.listeners[0].back_timeout == 5


@pytest.mark.parametrize("protocol, line, key, what", [
    ("http", 'tls_versions = ["TLSv1.2"]', "tls_versions", "only for https listeners"),
    ("tcp", 'cipher_list = "HIGH"', "cipher_list", "only for https listeners"),
    ("tcp", 'answer_404 = "404.http"', "answer_404", "only for http and https listeners"),
    ("tcp", 'answer_503 = "503.http"', "answer_503", "only for http and https listeners"),
    ("tcp", 'sticky_name = "S"', "sticky_name", "only for http and https listeners"),
    ("tcp", "request_timeout = 3", "request_timeout", "only for http and https listeners"),
    ("https", "tls_versions = []", "tls_versions", "invalid value"),
    ("https", 'tls_versions = ["TLSv1.1"]', "tls_versions", "invalid value"),
    ("https", 'tls_versions = ["TLSv1.2", "TLSv1.2"]', "tls_versions", "invalid value"),
    ("https", 'tls_versions = ["TLSv1.2", "tlsv1_2"]', "tls_versions", "invalid value"),
    ("https", 'tls_versions = ["sslv3"]', "tls_versions", "invalid value"),
    ("https", 'tls_versions = "TLSv1.2"', "tls_versions", "wrong type"),
    ("https", 'cipher_list = "NO-SUCH-CIPHER"', "cipher_list", "OpenSSL matches no cipher"),
    ("https", 'cipher_list = ""', "cipher_list", "empty string"),
    ("http", 'alpn = ["h2"]', "alpn", "only for https listeners"),
    ("tcp", "http2_max_concurrent_streams = 5", "http2_max_concurrent_streams", "only for https listeners"),
    ("http", "http2_max_concurrent_streams = 5", "http2_max_concurrent_streams",
     "h2c_prior_knowledge = true beside it"),
    ("https", "h2c_prior_knowledge = true", "h2c_prior_knowledge", "only for http listeners"),
    ("tcp", "h2c_prior_knowledge = false", "h2c_prior_knowledge", "only for http listeners"),
    ("http", 'h2c_prior_knowledge = "yes"', "h2c_prior_knowledge", "wrong type"),
    ("https", "alpn = []", "alpn", "invalid value"),
    ("https", 'alpn = ["h3"]', "alpn", "invalid value"),
    ("https", 'alpn = ["h2", "h2"]', "alpn", "invalid value"),
    ("https", "http2_max_concurrent_streams = 0", "http2_max_concurrent_streams", "out of range"),
    ("http", 'sticky_name = "a b"', "sticky_name", "invalid value"),
    ("http", 'sticky_name = "a;b"', "sticky_name", "invalid value"),
    ("http", 'expect_proxy = "true"', "expect_proxy", "wrong type"),
    ("http", "front_timeout = 0", "front_timeout", "out of range"),
    ("http", 'protocol = "udp"', "protocol", "invalid value"),
    ("http", 'adress = "127.0.0.1:1"', "adress", "did you mean address?"),
    ("http", 'answer_404 = "missing.http"', "answer_404", "No such file or directory"),
    ("http", 'answer_404 = "not-http.http"', "answer_404", "is not an HTTP response"),
    ("http", 'answer_503 = "no-empty-line.http"', "answer_503", "has no empty line after its headers"),
    ("http", 'answer_503 = "."', "answer_503", "Is a directory"),
])
def test_listener_invalid(protocol, line, key, what):
    text = f'[[listeners]]\naddress = "127.0.0.1:9000"\n{line}\n'
    if not line.startswith("protocol"):
        text = text.replace("[[listeners]]\n", f'[[listeners]]\nprotocol = "{protocol}"\n')
    error = fails(text, listeners=False)
    assert error.key == f"listeners[0].{key}" and what in str(error), str(error)


def test_listener_protocol_and_address_required():
    assert fails('[[listeners]]\naddress = "127.0.0.1:1"\n', listeners=False).key == "listeners[0].protocol"
    assert fails('[[listeners]]\nprotocol = "http"\n', listeners=False).key == "listeners[0].address"


def test_listener_address_unique():
    error = fails(LISTENERS + '[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:08080"\n', listeners=False)
    assert error.key == "listeners[3].address" and "already used by listeners[0].address" in str(error)


def test_wildcard_and_specific_address_on_one_port_would_not_bind():
    error = fails(LISTENERS + '[[listeners]]\nprotocol = "tcp"\naddress = "0.0.0.0:8080"\n', listeners=False)
    assert error.key == "listeners[3].address" and "port 8080 is already bound" in str(error)
    c = cfg('[[listeners]]\nprotocol = "tcp"\naddress = "[::]:8080"\n')   # another family: fine
    assert len(c.listeners) == 4


# --- applications ---------------------------------------------------------------------------------

def test_application_defaults():
    c = cfg(app('{ address = "127.0.0.1:8080", hostname = "Example.COM" }', '"127.0.0.1:1026"'))
    assert c.applications == (config.ApplicationConfig(
        app_id="MyApp", protocol="http",
        frontends=(config.FrontendConfig(address="127.0.0.1:8080", hostname="example.com"),),
        backends=(config.BackendConfig(address="127.0.0.1:1026", backend_id="MyApp-0"),)),)


def test_application_every_key():
    c = cfg(app(extra='protocol = "http"\nsticky_session = true\nhttps_redirect = true\nsend_proxy = true\n'
                      'load_balancing_policy = "poweroftwo"\nanswer_503 = "503.http"'))
    a = c.applications[0]
    assert (a.sticky_session, a.https_redirect, a.send_proxy, a.load_balancing_policy, a.answer_503) == (
        True, True, True, "poweroftwo", pem("503.http"))


def test_application_without_frontends_or_backends():
    c = cfg("[applications.empty]\n")
    assert c.applications[0].frontends == () and c.applications[0].backends == ()


def test_applications_keep_file_order():
    c = cfg(app(name="zeta") + app(name="alpha") + app(name="mid"))
    assert [a.app_id for a in c.applications] == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize("text, key, what", [
    (app(extra='protocol = "udp"'), "applications.MyApp.protocol", "invalid value"),
    (app(extra='load_balancing_policy = "RoundRobin"'), "applications.MyApp.load_balancing_policy",
     "invalid value"),
    (app(extra="sticky_session = 1"), "applications.MyApp.sticky_session", "wrong type"),
    (app(extra='protocol = "tcp"\nsticky_session = true'), "applications.MyApp.sticky_session",
     "only for http applications"),
    (app(extra='protocol = "tcp"\nhttps_redirect = false'), "applications.MyApp.https_redirect",
     "only for http applications"),
    (app(extra='protocol = "tcp"\nanswer_503 = "503.http"'), "applications.MyApp.answer_503",
     "only for http applications"),
    (app(extra='answer_503 = "not-http.http"'), "applications.MyApp.answer_503", "not an HTTP response"),
    (app(extra="hostname = 1"), "applications.MyApp.hostname", "unknown key"),
    ("[applications]\nMyApp = 3\n", "applications.MyApp", "wrong type"),
    ('[applications."my app"]\n', 'applications."my app"', "invalid application name"),
    ("applications.MyApp.frontends = 3\n", "applications.MyApp.frontends", "wrong type"),
    ("applications.MyApp.frontends = [3]\n", "applications.MyApp.frontends[0]", "wrong type"),
    ("applications.MyApp.backends = {}\n", "applications.MyApp.backends", "wrong type"),
])
def test_application_invalid(text, key, what):
    error = fails(text)
    assert error.key == key and what in str(error), str(error)


def test_load_balancing_policies_and_proxy_protocol_in_orders():
    text = "".join(app(name=f"a{p}", extra=f'load_balancing_policy = "{p}"')
                   for p in ("roundrobin", "random", "leastconnections", "poweroftwo"))
    text += app(name="tcp", extra='protocol = "tcp"\nsend_proxy = true')
    added = orders_of(text, "ADD_APPLICATION")
    assert [a["load_balancing_policy"] for a in added] == [
        "RoundRobin", "Random", "LeastConnections", "PowerOfTwo", "RoundRobin"]
    assert [a["proxy_protocol"] for a in added] == [None, None, None, None, "SendHeader"]


# --- frontends ------------------------------------------------------------------------------------

def front(fields: str, protocol: str = "http") -> str:
    return app(f"{{ {fields} }}", extra=f'protocol = "{protocol}"')


def test_http_frontends_on_http_and_https_listeners():
    text = app('{ address = "127.0.0.1:8080", hostname = "*.Example.com", path_begin = "/api" },'
               '{ address = "127.0.0.1:8443", hostname = "example.com" }')
    assert orders_of(text, "ADD_HTTP_FRONT") == [
        {"app_id": "MyApp", "address": "127.0.0.1:8080", "hostname": "*.example.com", "path_begin": "/api"}]
    assert orders_of(text, "ADD_HTTPS_FRONT") == [
        {"app_id": "MyApp", "address": "127.0.0.1:8443", "hostname": "example.com", "path_begin": ""}]


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "a-b.c_d.example", "*.example.com",
                                      "xn--bcher-kva.example", "[::1]", "bücher.example"])
def test_hostname_valid(hostname):
    assert cfg(front(f'address = "127.0.0.1:8080", hostname = "{hostname}"'))


@pytest.mark.parametrize("hostname", ["", "example.com:8080", "http://example.com", "a..b", "-a.com",
                                      "a.*.com", "*", "ex ample.com", "a" * 64 + ".com", "[nope]", ".a.com"])
def test_hostname_invalid(hostname):
    error = fails(front(f'address = "127.0.0.1:8080", hostname = "{hostname}"'))
    assert error.key == "applications.MyApp.frontends[0].hostname"


@pytest.mark.parametrize("path_begin, ok", [("", True), ("/", True), ("/api/v1", True), ("/a%20b", True),
                                            ("api", False), ("/a b", False), ("/a?b", False), ("/a#b", False)])
def test_path_begin(path_begin, ok):
    text = front(f'address = "127.0.0.1:8080", hostname = "a.com", path_begin = "{path_begin}"')
    if ok:
        assert cfg(text).applications[0].frontends[0].path_begin == path_begin
    else:
        assert fails(text).key == "applications.MyApp.frontends[0].path_begin"


@pytest.mark.parametrize("text, key, what", [
    (front('hostname = "a.com"'), "address", "missing required key"),
    (front('address = "127.0.0.1:8080"'), "hostname", "missing required key"),
    (front('address = "127.0.0.1:9999", hostname = "a.com"'), "address", "no listener at this address"),
    (front('address = "127.0.0.1:8081", hostname = "a.com"'), "address", "this is a tcp listener"),
    (front('address = "127.0.0.1:8080"', "tcp"), "address", "this is an http listener"),
    (front('address = "127.0.0.1:8443"', "tcp"), "address", "this is an https listener"),
    (front('address = "127.0.0.1:8081", hostname = "a.com"', "tcp"), "hostname", "only for http applications"),
    (front('address = "127.0.0.1:8081", path_begin = "/"', "tcp"), "path_begin", "only for http applications"),
    (front('address = "127.0.0.1:8080", hostname = "a.com", certificate = "cert.pem", key = "key.pem"'),
     "certificate", "only on https listeners"),
    (front('address = "localhost:8080", hostname = "a.com"'), "address", "sozu never resolves names"),
])
def test_frontend_invalid(text, key, what):
    error = fails(text)
    assert error.key == f"applications.MyApp.frontends[0].{key}" and what in str(error), str(error)


def test_message_frontend_on_missing_listener_lists_candidates():
    error = fails(front('address = "127.0.0.1:9999", hostname = "a.com"'))
    assert str(error).endswith('(got "127.0.0.1:9999", expected the address of an http or https listener for an '
                               "http application (127.0.0.1:8080, 127.0.0.1:8443))")


def test_tcp_frontend():
    assert orders_of(front('address = "127.0.0.1:8081"', "tcp"), "ADD_TCP_FRONT") == [
        {"app_id": "MyApp", "address": "127.0.0.1:8081"}]


def test_route_owned_by_two_applications():
    fields = '{ address = "127.0.0.1:8080", hostname = "A.com", path_begin = "/x" }'
    error = fails(app(fields, name="one") + app(fields.replace("A.com", "a.com"), name="two"))
    assert error.key == "applications.two.frontends[0].hostname"
    assert "the same address, hostname and path rule as applications.one.frontends[0]" in str(error)


def test_route_twice_in_one_application():
    fields = '{ address = "127.0.0.1:8080", hostname = "a.com" }'
    assert fails(app(f"{fields}, {fields}")).key == "applications.MyApp.frontends[1].hostname"


def test_same_hostname_on_other_path_or_listener_is_fine():
    text = app('{ address = "127.0.0.1:8080", hostname = "a.com" },'
               '{ address = "127.0.0.1:8080", hostname = "a.com", path_begin = "/b" },'
               '{ address = "127.0.0.1:8443", hostname = "a.com" }')
    assert len(cfg(text).applications[0].frontends) == 3


def test_one_tcp_application_per_tcp_listener():
    fields = '{ address = "127.0.0.1:8081" }'
    error = fails(app(fields, name="one", extra='protocol = "tcp"') + app(fields, name="two", extra='protocol = "tcp"'))
    assert error.key == "applications.two.frontends[0].address" and "already routed by" in str(error)


# --- certificates ---------------------------------------------------------------------------------

def tls(fields: str, name: str = "MyApp") -> str:
    return app(f'{{ address = "127.0.0.1:8443", hostname = "example.com", {fields} }}', name=name)


def test_certificate_key_and_chain_read_as_pem():
    c = cfg(tls('certificate = "cert.pem", key = "key.pem", certificate_chain = "ca.pem"'))
    f = c.applications[0].frontends[0]
    assert (f.certificate, f.key, f.certificate_chain) == (pem("cert.pem"), pem("key.pem"), (pem("ca.pem"),))
    assert f.certificate_path == str(DATA / "cert.pem")
    assert orders_of(tls('certificate = "cert.pem", key = "key.pem", certificate_chain = "ca.pem"'),
                     "ADD_CERTIFICATE") == [{"front": "127.0.0.1:8443", "names": [], "certificate": {
                         "certificate": pem("cert.pem"), "key": pem("key.pem"), "certificate_chain": [pem("ca.pem")]}}]


def test_fullchain_file_gives_the_leaf_then_the_chain():
    f = cfg(tls('certificate = "fullchain.pem", key = "key.pem"')).applications[0].frontends[0]
    assert (f.certificate, f.certificate_chain) == (pem("cert.pem"), (pem("ca.pem"),))


def test_https_frontend_without_certificate():
    c = cfg(tls('path_begin = "/"'))
    assert c.applications[0].frontends[0].certificate is None
    assert "ADD_CERTIFICATE" not in [o.type for o in c.to_orders()]


@pytest.mark.parametrize("fields, key, what", [
    ('certificate = "cert.pem"', "key", "missing required key"),
    ('key = "key.pem"', "key", "needs certificate"),
    ('certificate_chain = "ca.pem"', "certificate_chain", "needs certificate"),
    ('certificate = "cert.pem", key = "missing.pem"', "key", "No such file or directory"),
    ('certificate = "cert.pem", key = "key.pem", certificate_chain = "missing.pem"', "certificate_chain",
     "No such file or directory"),
    ('certificate = "key.pem", key = "key.pem"', "certificate", "no PEM certificate in"),
    ('certificate = "bad-cert.pem", key = "key.pem"', "certificate", "bad-cert.pem: not a valid PEM certificate"),
    ('certificate = "cert.pem", key = "key.pem", certificate_chain = "bad-cert.pem"', "certificate_chain",
     "bad-cert.pem: not a valid PEM certificate"),
    ('certificate = "cert.pem", key = "cert.pem"', "key", "0 PEM private keys"),
    ('certificate = "cert.pem", key = "other-key.pem"', "key", "does not match the certificate"),
    ('certificate = "cert.pem", key = "encrypted-key.pem"', "key", "encrypted private keys are not supported"),
    ('certificate = "404.http", key = "key.pem"', "certificate", "no PEM certificate"),
    ("certificate = 1, key = \"key.pem\"", "certificate", "wrong type"),
])
def test_certificate_invalid(fields, key, what):
    error = fails(tls(fields))
    assert error.key == f"applications.MyApp.frontends[0].{key}" and what in str(error), str(error)


def test_same_certificate_on_several_frontends_of_one_listener_is_added_once():
    text = app('{ address = "127.0.0.1:8443", hostname = "example.com", certificate = "cert.pem", key = "key.pem",'
               ' certificate_chain = "ca.pem" },'
               '{ address = "127.0.0.1:8443", hostname = "www.example.com", certificate = "fullchain.pem",'
               ' key = "key.pem" },'
               '{ address = "127.0.0.1:8443", hostname = "other.example.org", certificate = "other.pem",'
               ' key = "other-key.pem" }')
    text += tls('path_begin = "/x", certificate = "cert.pem", key = "key.pem", certificate_chain = "ca.pem"',
                name="two")
    text += '[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:9443"\n'
    text += app('{ address = "127.0.0.1:9443", hostname = "example.com", certificate = "cert.pem",'
                ' key = "key.pem", certificate_chain = "ca.pem" }', name="three")
    added = [(o["front"], o["certificate"]["certificate"]) for o in orders_of(text, "ADD_CERTIFICATE")]
    assert added == [("127.0.0.1:8443", pem("cert.pem")), ("127.0.0.1:8443", pem("other.pem")),
                     ("127.0.0.1:9443", pem("cert.pem"))]


def test_same_certificate_with_another_chain_on_one_listener():
    text = app('{ address = "127.0.0.1:8443", hostname = "example.com", certificate = "cert.pem", key = "key.pem",'
               ' certificate_chain = "ca.pem" },'
               '{ address = "127.0.0.1:8443", hostname = "www.example.com", certificate = "cert.pem",'
               ' key = "key.pem" }')
    error = fails(text)
    assert error.key == "applications.MyApp.frontends[1].certificate"
    assert "the same certificate as applications.MyApp.frontends[0].certificate with another key or chain" in str(error)


# --- backends -------------------------------------------------------------------------------------

def test_backends_string_and_table():
    text = app(backends='"127.0.0.1:1026", { address = "[::1]:1027", weight = 0, sticky_id = "b-2", backup = true,'
                        ' backend_id = "custom" }, { address = "10.0.0.1:80", weight = 1000 }')
    assert cfg(text).applications[0].backends == (
        config.BackendConfig(address="127.0.0.1:1026", backend_id="MyApp-0"),
        config.BackendConfig(address="[::1]:1027", backend_id="custom", weight=0, sticky_id="b-2", backup=True),
        config.BackendConfig(address="10.0.0.1:80", backend_id="MyApp-2", weight=1000))


@pytest.mark.parametrize("backend, key, what", [
    ('"localhost:80"', "backends[0]", "not a numeric address"),
    ('"0.0.0.0:80"', "backends[0]", "unspecified address"),
    ('{ address = "[::]:80" }', "backends[0].address", "unspecified address"),
    ("80", "backends[0]", "wrong type"),
    ('{ weight = 1 }', "backends[0].address", "missing required key"),
    ('{ address = "127.0.0.1:80", weight = 1001 }', "backends[0].weight", "out of range"),
    ('{ address = "127.0.0.1:80", weight = -1 }', "backends[0].weight", "out of range"),
    ('{ address = "127.0.0.1:80", weight = true }', "backends[0].weight", "wrong type"),
    ('{ address = "127.0.0.1:80", backup = "no" }', "backends[0].backup", "wrong type"),
    ('{ address = "127.0.0.1:80", sticky_id = "a;b" }', "backends[0].sticky_id", "invalid value"),
    ('{ address = "127.0.0.1:80", sticky_id = "" }', "backends[0].sticky_id", "empty string"),
    ('{ address = "127.0.0.1:80", backend_id = "a\\tb" }', "backends[0].backend_id", "invalid value"),
    ('{ address = "127.0.0.1:80", weigth = 1 }', "backends[0].weigth", "did you mean weight?"),
    ('"127.0.0.1:80", { address = "127.0.0.1:80", backend_id = "MyApp-0" }', "backends[1].address",
     "the same backend_id and address as applications.MyApp.backends[0]"),
])
def test_backend_invalid(backend, key, what):
    error = fails(app(backends=backend))
    assert error.key == f"applications.MyApp.{key}" and what in str(error), str(error)


def test_same_backend_address_twice_gets_two_ids():
    assert [b["backend_id"] for b in orders_of(app(backends='"127.0.0.1:80", "127.0.0.1:80"'), "ADD_BACKEND")] == [
        "MyApp-0", "MyApp-1"]


# --- orders ---------------------------------------------------------------------------------------

REPRESENTATIVE = """
command_socket = "./sozu.sock"
front_timeout = 20

[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
answer_404 = "404.http"

[[listeners]]
protocol = "https"
address = "[::1]:8443"
answer_503 = "503.http"
tls_versions = ["TLSv1.3"]
expect_proxy = true
connect_timeout = 2

[[listeners]]
protocol = "tcp"
address = "0.0.0.0:8081"

[applications.MyApp]
sticky_session = true
https_redirect = true
load_balancing_policy = "leastconnections"
answer_503 = "503.http"
frontends = [
  { address = "127.0.0.1:8080", hostname = "Example.com", path_begin = "/api" },
  { address = "[::1]:8443", hostname = "example.com", certificate = "fullchain.pem", key = "key.pem" },
]
backends = [ { address = "127.0.0.1:1026", weight = 50, sticky_id = "s1" }, "127.0.0.1:1027" ]

[applications.db]
protocol = "tcp"
send_proxy = true
frontends = [ { address = "0.0.0.0:8081" } ]
backends = [ { address = "[::1]:5432", backup = true, backend_id = "primary" } ]
"""


def test_to_orders_of_a_representative_config():
    c = parse(REPRESENTATIVE, PATH)
    http_listener = {"front": "127.0.0.1:8080", "public_address": None, "answer_404": pem("404.http"),
                     "answer_503": None, "expect_proxy": False, "sticky_name": "SOZUBALANCEID",
                     "front_timeout": 20, "back_timeout": 30, "connect_timeout": 3, "request_timeout": 10}
    https_listener = {"front": "[::1]:8443", "public_address": None, "answer_404": None,
                      "answer_503": pem("503.http"), "expect_proxy": True, "sticky_name": "SOZUBALANCEID",
                      "front_timeout": 20, "back_timeout": 30, "connect_timeout": 2, "request_timeout": 10,
                      "versions": ["TLSv1.3"], "cipher_list": None, "alpn": ["h2", "http/1.1"],
                      "http2_max_concurrent_streams": 100}
    tcp_listener = {"front": "0.0.0.0:8081", "public_address": None, "expect_proxy": False,
                    "front_timeout": 20, "back_timeout": 30, "connect_timeout": 3}
    assert c.to_orders() == [
        Order("ADD_HTTP_LISTENER", http_listener),
        Order("ACTIVATE_LISTENER", {"front": "127.0.0.1:8080", "proxy": "HTTP", "from_scm": False}),
        Order("ADD_HTTPS_LISTENER", https_listener),
        Order("ACTIVATE_LISTENER", {"front": "[::1]:8443", "proxy": "HTTPS", "from_scm": False}),
        Order("ADD_TCP_LISTENER", tcp_listener),
        Order("ACTIVATE_LISTENER", {"front": "0.0.0.0:8081", "proxy": "TCP", "from_scm": False}),
        Order("ADD_CERTIFICATE", {"front": "[::1]:8443", "names": [], "certificate": {
            "certificate": pem("cert.pem"), "key": pem("key.pem"), "certificate_chain": [pem("ca.pem")]}}),
        Order("ADD_APPLICATION", {"app_id": "MyApp", "sticky_session": True, "https_redirect": True,
                                  "proxy_protocol": None, "send_proxy_version": 2, "load_balancing_policy": "LeastConnections",
                                  "answer_503": pem("503.http")}),
        Order("ADD_APPLICATION", {"app_id": "db", "sticky_session": False, "https_redirect": False,
                                  "proxy_protocol": "SendHeader", "send_proxy_version": 2, "load_balancing_policy": "RoundRobin",
                                  "answer_503": None}),
        Order("ADD_BACKEND", {"app_id": "MyApp", "backend_id": "MyApp-0", "address": "127.0.0.1:1026",
                              "sticky_id": "s1", "load_balancing_parameters": {"weight": 50}, "backup": False}),
        Order("ADD_BACKEND", {"app_id": "MyApp", "backend_id": "MyApp-1", "address": "127.0.0.1:1027",
                              "sticky_id": None, "load_balancing_parameters": {"weight": 100}, "backup": False}),
        Order("ADD_BACKEND", {"app_id": "db", "backend_id": "primary", "address": "[::1]:5432",
                              "sticky_id": None, "load_balancing_parameters": {"weight": 100}, "backup": True}),
        Order("ADD_HTTP_FRONT", {"app_id": "MyApp", "address": "127.0.0.1:8080", "hostname": "example.com",
                                 "path_begin": "/api"}),
        Order("ADD_HTTPS_FRONT", {"app_id": "MyApp", "address": "[::1]:8443", "hostname": "example.com",
                                  "path_begin": ""}),
        Order("ADD_TCP_FRONT", {"app_id": "db", "address": "0.0.0.0:8081"}),
    ]


def test_orders_are_plain_json():
    import json
    for order in parse(REPRESENTATIVE, PATH).to_orders():
        assert json.loads(json.dumps(order.to_json())) == order.to_json()


# Every valid configuration of this file, for the tests that replay orders.
VALID = {
    "representative": REPRESENTATIVE,
    "default": (ROOT / "conf" / "config.toml").read_text(),
    "certificates": HEAD + LISTENERS + app(
        '{ address = "127.0.0.1:8443", hostname = "example.com", certificate = "cert.pem", key = "key.pem",'
        ' certificate_chain = "ca.pem" },'
        '{ address = "127.0.0.1:8443", hostname = "www.example.com", certificate = "fullchain.pem", key = "key.pem",'
        ' path_begin = "/w" },'
        '{ address = "127.0.0.1:8443", hostname = "*.example.org", certificate = "other.pem",'
        ' key = "other-key.pem" },'
        '{ address = "127.0.0.1:8080", hostname = "example.com" }',
        '"127.0.0.1:1", "127.0.0.1:1", { address = "127.0.0.1:2", backend_id = "x", sticky_id = "x" }'),
    "empty": HEAD,
    "apps without routes": HEAD + LISTENERS + app(name="a") + app(name="b", extra='protocol = "tcp"'),
}


def conf_path(name: str) -> str:
    return str(ROOT / "conf" / "config.toml") if name == "default" else PATH


@pytest.mark.parametrize("name", VALID)
def test_orders_apply_to_an_empty_config_state(name):
    state_module = pytest.importorskip("sozu.state", reason="sozu/state.py (ConfigState) is not written yet")
    if not hasattr(state_module, "ConfigState"):
        pytest.skip("sozu.state has no ConfigState yet")
    state = state_module.ConfigState()
    for order in parse(VALID[name], conf_path(name)).to_orders():
        state.dispatch(order)


@pytest.mark.parametrize("name", VALID)
def test_orders_are_already_normalised(name):
    if not hasattr(Order, "from_json"):
        pytest.skip("sozu.messages.Order.from_json is not written yet")
    for order in parse(VALID[name], conf_path(name)).to_orders():
        assert Order.from_json(order.to_json()) == order


# --- files ----------------------------------------------------------------------------------------

def test_default_config_loads():
    c = load(str(ROOT / "conf" / "config.toml"))
    assert c.command_socket == str(ROOT / "conf" / "sozu.sock") and c.worker_count == 2
    assert c.max_connections == 1000     # the built-in 10000 needs more descriptors than many hosts allow
    assert [(l.protocol, l.address) for l in c.listeners] == [("http", "127.0.0.1:8080")]
    (demo,) = c.applications
    assert demo.app_id == "demo"
    assert [(f.address, f.hostname) for f in demo.frontends] == [
        ("127.0.0.1:8080", "localhost"), ("127.0.0.1:8080", "127.0.0.1")]
    assert [b.address for b in demo.backends] == ["127.0.0.1:1026"]


def test_default_config_documents_only_known_keys():
    """Every commented-out `# key = value` of conf/config.toml is a key sozu accepts somewhere."""
    import re
    schemas = (config.Config, config.ListenerConfig, config.ApplicationConfig, config.FrontendConfig,
               config.BackendConfig, config.MetricsConfig, config.EtcdProviderConfig,
               config.SandboxConfig)
    known = {f.name for schema in schemas for f in dataclasses.fields(schema)}
    known |= set(health_check({}))  # [applications.NAME.health_check]
    top_keys = {f.name for f in dataclasses.fields(config.Config)} - {"path", "listeners", "applications", "explicit",
                                                                 "metrics", "provider"}
    text = (ROOT / "conf" / "config.toml").read_text()
    documented = set(re.findall(r"^(?:# )?([a-z_0-9]+) = ", text, re.M))
    documented |= set(re.findall(r"[{,] *([a-z_]+) = ", text))
    assert documented and documented <= known, documented - known
    assert top_keys <= documented
    assert {f.name for f in dataclasses.fields(config.MetricsConfig)} <= documented
    assert {f.name for f in dataclasses.fields(config.EtcdProviderConfig)} <= documented


@pytest.mark.parametrize("name", ["404.http", "503.http"])
def test_example_answer_files_are_valid(name):
    c = parse(f'command_socket = "s"\n[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:1"\n'
              f'answer_404 = "{name}"\n', str(ROOT / "conf" / "x.toml"))
    assert c.listeners[0].answer_404 == (ROOT / "conf" / name).read_bytes().decode()


def test_load_resolves_relative_to_the_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "404.http").write_text("HTTP/1.1 404 Not Found\r\n\r\n")
    (tmp_path / "conf" / "s.toml").write_text(
        'command_socket = "s.sock"\n[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:1"\n'
        'answer_404 = "404.http"\n')
    monkeypatch.chdir(tmp_path)
    c = load("conf/s.toml")
    assert c.path == str(tmp_path / "conf" / "s.toml")
    assert c.command_socket == str(tmp_path / "conf" / "s.sock")
    assert c.listeners[0].answer_404 == "HTTP/1.1 404 Not Found\r\n\r\n"


def test_load_missing_or_unreadable_file(tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == f"{missing}: cannot read the configuration file: No such file or directory"
    with pytest.raises(ConfigError, match="Is a directory"):
        load(str(tmp_path))


def test_load_invalid_toml_and_encoding(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('command_socket = "a"\ncommand_socket = "b"\n')
    with pytest.raises(ConfigError) as info:
        load(str(bad))
    assert str(info.value).startswith(f"{bad}: invalid TOML: ") and "line 2" in str(info.value)
    bad.write_bytes(b'command_socket = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(str(bad))


def test_check_summary(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(REPRESENTATIVE.replace('"404.http"', f'"{DATA}/404.http"').replace(
        '"503.http"', f'"{DATA}/503.http"').replace('"fullchain.pem"', f'"{DATA}/fullchain.pem"').replace(
        '"key.pem"', f'"{DATA}/key.pem"'))
    assert config.check(str(path)) == f"{path}: OK, 3 listeners, 2 applications, 3 backends"
    assert config.check(str(ROOT / "conf" / "config.toml")).endswith(": OK, 1 listener, 1 application, 1 backend")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        cfg().worker_count = 3


# --- purity ---------------------------------------------------------------------------------------

def test_config_module_imports_no_io_library():
    tree = ast.parse((ROOT / "sozu" / "config.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"gevent", "socket", "logging", "selectors", "subprocess", "ssl"}, imported


def test_loading_a_config_leaves_gevent_out():
    code = ("import sys, sozu.config as c; c.load(sys.argv[1]); "
            "assert 'gevent' not in sys.modules and 'socket' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "conf" / "config.toml")], check=True)


def test_explicit_names_the_top_level_keys_the_file_sets():
    c = parse('command_socket = "s"\nmax_connections = 10\n', "/x/sozu.toml")
    assert c.explicit == {"command_socket", "max_connections"}
    with pytest.raises(ConfigError, match="explicit"):
        parse('command_socket = "s"\nexplicit = 1\n', "/x/sozu.toml")


def test_an_expired_certificate_is_refused_as_at_runtime(tmp_path):
    """The config checks certificates as the master checks a `certificate add`."""
    import datetime
    from tests.integration.certs import TestCA
    now = datetime.datetime.now(datetime.timezone.utc)
    old = TestCA(tmp_path).issue(["old.test"], not_before=now - datetime.timedelta(days=30),
                                 not_after=now - datetime.timedelta(days=1))
    (tmp_path / "old.pem").write_text(old.cert_pem)
    (tmp_path / "old-key.pem").write_text(old.key_pem)
    text = ('command_socket = "s"\n[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n'
            '[applications.a]\nfrontends = [ { address = "127.0.0.1:8443", hostname = "old.test", '
            'certificate = "old.pem", key = "old-key.pem" } ]\n')
    with pytest.raises(ConfigError) as error:
        parse(text, str(tmp_path / "sozu.toml"))
    assert error.value.key == "applications.a.frontends[0].certificate"
    assert "old.pem: expired on" in str(error.value)


def test_send_proxy_version_goes_with_send_proxy():
    base = ('command_socket = "s"\n[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:5000"\n'
            '[applications.t]\nprotocol = "tcp"\nfrontends = [ { address = "127.0.0.1:5000" } ]\n')
    c = parse(base + "send_proxy = true\nsend_proxy_version = 1\n", "/x/sozu.toml")
    add = next(o for o in c.to_orders() if o.type == "ADD_APPLICATION")
    assert (add.data["proxy_protocol"], add.data["send_proxy_version"]) == ("SendHeader", 1)
    with pytest.raises(ConfigError, match=r"applications\.t\.send_proxy_version: only with send_proxy"):
        parse(base + "send_proxy_version = 1\n", "/x/sozu.toml")
    with pytest.raises(ConfigError, match=r"applications\.t\.send_proxy_version"):
        parse(base + "send_proxy = true\nsend_proxy_version = 3\n", "/x/sozu.toml")


# --- routing rules of frontends (docs/routing.md) -------------------------------------------

def test_frontend_rules_become_order_fields():
    text = app('{ address = "127.0.0.1:8080", hostname = "a.com", path = "^/u/([0-9]+)", path_type = "regex",'
               ' methods = ["get"], rewrite = { path_regex = "^/u/([0-9]+)", path_replacement = "/user/\\\\1" },'
               ' response_headers = [ { action = "set", name = "X-Frame-Options", value = "DENY" } ] },'
               '{ address = "127.0.0.1:8080", hostname = "a.com", path = "/old", redirect = { host = "b.com" } }')
    fronts = [o.data for o in cfg(text).to_orders() if o.type == "ADD_HTTP_FRONT"]
    assert fronts[0] == {
        "app_id": "MyApp", "address": "127.0.0.1:8080", "hostname": "a.com", "path_begin": "",
        "path": {"kind": "REGEX", "value": "^/u/([0-9]+)"}, "methods": ["GET"],
        "rewrite": {"host": None, "strip_prefix": None, "path_regex": "^/u/([0-9]+)",
                    "path_replacement": "/user/\\1"},
        "response_headers": [{"action": "SET", "name": "X-Frame-Options", "value": "DENY"}]}
    assert fronts[1]["path_begin"] == "/old" and "path" not in fronts[1]
    assert fronts[1]["redirect"] == {"status": 302, "scheme": None, "host": "b.com", "port": None,
                                     "path": None, "query": None}


@pytest.mark.parametrize("fields, key, problem", [
    ('path = "((", path_type = "REGEX"', "path", "bad regular expression"),
    ('path_type = "EQUALS"', "path_type", "needs path"),
    ('path = "/a", path_type = "SUFFIX"', "path_type", 'expected one of "PREFIX", "EQUALS", "REGEX"'),
    ('methods = []', "methods", "non-empty list of methods"),
    ('redirect = { status = 303, host = "b.com" }', "redirect.status", "one of 301, 302, 307, 308"),
    ('redirect = { status = 301 }', "redirect", "the URL it asked for"),
    ('redirect = { host = "b.com", colour = "red" }', "redirect.colour", "unknown field"),
    ('rewrite = { path_regex = "a(b)", path_replacement = "\\\\2" }', "rewrite.path_replacement",
     "invalid group reference"),
    ('request_headers = [ { action = "set", name = "Content-Length", value = "1" } ]',
     "request_headers[0].name", "cannot be edited"),
    ('response_headers = [ { action = "add", name = "X-A", value = "a\\nb" } ]',
     "response_headers[0].value", "printable ASCII"),
])
def test_bad_frontend_rules_name_their_key(fields, key, problem):
    error = fails(app(f'{{ address = "127.0.0.1:8080", hostname = "a.com", {fields} }}'))
    assert error.key == f"applications.MyApp.frontends[0].{key}"
    assert problem in str(error)


def test_two_fronts_differing_by_rule_kind_are_distinct_routes():
    text = app('{ address = "127.0.0.1:8080", hostname = "a.com", path = "/a" },'
               '{ address = "127.0.0.1:8080", hostname = "a.com", path = "/a", path_type = "EQUALS" },'
               '{ address = "127.0.0.1:8080", hostname = "a.com", path = "/a", methods = ["POST"] }')
    assert len([o for o in cfg(text).to_orders() if o.type == "ADD_HTTP_FRONT"]) == 3
    text = app('{ address = "127.0.0.1:8080", hostname = "a.com", path = "/a" },'
               '{ address = "127.0.0.1:8080", hostname = "a.com", path_begin = "/a" }')
    assert fails(text).key == "applications.MyApp.frontends[1].hostname"


def test_metrics_section():
    assert cfg().metrics == config.MetricsConfig()
    c = cfg('[metrics]\nprometheus = "127.0.0.1:9180"\naddress = "127.0.0.1:8125"\nprefix = "edge"\n'
            "tagged_metrics = true\nflush_interval = 5\n", listeners=False)
    assert c.metrics == config.MetricsConfig("127.0.0.1:9180", "127.0.0.1:8125", "edge", True, 5)


def test_health_check_section():
    app = ('[applications.a]\nprotocol = "tcp"\nbackends = ["127.0.0.1:1"]\n'
           "[applications.a.health_check]\ninterval = 0.5\ntimeout = 0.2\n")
    check = cfg(app, listeners=False).applications[0].health_check
    assert check["protocol"] == "tcp" and check["interval"] == 0.5 and check["fall"] == 3
    assert fails(app + "falls = 2\n", listeners=False).key == "applications.a.health_check.falls"
    assert fails(app.replace("0.2", "0.9"), listeners=False).key == "applications.a.health_check.timeout"
    assert fails('[applications.a]\nhealth_check = 1\n', listeners=False).key == "applications.a.health_check"


def test_the_command_socket_alone_is_read_for_sozuctl(tmp_path):
    path = tmp_path / "sozu.toml"
    path.write_text('command_socket = "run/sozu.sock"\nworker_cont = 2\n'
                    '[applications.a]\nfrontends = [ { address = "127.0.0.1:1", certificate = "gone.pem" } ]\n')
    assert config.command_socket(str(path)) == str(tmp_path / "run" / "sozu.sock")
    with pytest.raises(config.ConfigError, match="worker_cont"):
        config.load(str(path))
    path.write_text('command_sockett = "x.sock"\n')
    with pytest.raises(config.ConfigError, match=r"command_socket: missing required key \(the file has command_sockett\)"):
        config.command_socket(str(path))
    path.write_text('command_socket = 3\n')
    with pytest.raises(config.ConfigError, match="command_socket: wrong type"):
        config.command_socket(str(path))
    path.write_text('command_socket = "x.sock\n')
    with pytest.raises(config.ConfigError, match="invalid TOML"):
        config.command_socket(str(path))
