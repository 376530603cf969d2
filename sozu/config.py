"""The TOML configuration file -> a validated, frozen Config -> the first orders (pure).

Theory of operation. `parse` walks the TOML tree once, top to bottom, through `_Table`, which
knows the dotted path of the table it wraps and takes its keys and defaults from the dataclass
the table becomes (so TOML keys and field names are the same words). It refuses unknown keys
before reading any value; its typed getters check type and range; every error is one line
naming the file, the dotted key, the value and what was expected. The files the config names
(answer pages, certificates, keys) are read and checked here, so a Config is self-contained:
workers, maybe chrooted, never open them. What ConfigState would refuse later (a frontend on a
missing listener, a route owned twice, one certificate with two keys) is refused here too, so
`to_orders()` is a plain translation whose orders always apply.
No gevent, no sockets, no logging: reading the config file and the files it names is the only
I/O. `cryptography` (certificates) and `OpenSSL` (cipher lists) are imported only when needed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from sozu import address as addresses, log_filter
from sozu.http import answers
from sozu.messages import MessageError, Order, health_check, normalize_hostname
from sozu.state import front_rule
from sozu.vocabulary import (ALPN_PROTOCOLS, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_POLICY,
                             DEFAULT_STICKY_NAME, DEFAULT_WEIGHT, LISTENER_TIMEOUTS,
                             MAX_CONCURRENT_STREAMS, MAX_WEIGHT, POLICY_BY_LOWER_NAME, TLS_VERSION_SPELLINGS,
                             TLS_VERSIONS)
from sozu.seccomp import ACTIONS as SECCOMP_ACTIONS

_TIMEOUT = LISTENER_TIMEOUTS
MAX_NAMED_FILE_SIZE = 1 << 20          # an answer page or a PEM file: it travels inside orders
MAX_TIMEOUT = 86_400                   # s; more than a day is a unit mistake, not a wish
UNIX_PATH_MAX = 107                    # sun_path holds 108 bytes with the final NUL

_REQUIRED = object()
_NOTHING = object()
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")                         # RFC 9110: cookie name
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")   # RFC 6265 cookie-octet
_NO_CONTROL = re.compile(r"[^\x00-\x1f\x7f]+")
_ACCOUNT = re.compile(r"[^\s:/]+")
_APP_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PATH_BEGIN = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*")   # printable; no space, '?', '#'
_STATUS_LINE = re.compile(r"HTTP/1\.[01] [1-5][0-9][0-9](?: [^\r\n]*)?\r?\n")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_A = {"http": "an http", "https": "an https", "tcp": "a tcp"}
_ANSWER_KEYS = tuple(f"answer_{status}" for status in answers.CUSTOM_STATUSES)


class ConfigError(Exception):
    """One line for a user: `<file>: <dotted.key>: <what is wrong> (got <value>, expected <what>)`."""

    def __init__(self, file: str, key: str | None, what: str, got=_NOTHING, expected=None):
        details = ([] if got is _NOTHING else [f"got {_show(got)}"])
        details += [f"expected {expected}"] if expected else []
        text = f"{file}: {key}: {what}" if key else f"{file}: {what}"
        super().__init__(text + (f" ({', '.join(details)})" if details else ""))
        self.file, self.key = file, key


@dataclass(frozen=True)
class ListenerConfig:
    protocol: str                      # http | https | tcp
    address: str                       # normalised IP:PORT
    answer_404: str | None = None      # raw HTTP answers (the files' text); http and https only
    answer_503: str | None = None
    answer_400: str | None = None      # (answers.CUSTOM_STATUSES; docs/routing.md)
    answer_408: str | None = None
    answer_413: str | None = None
    answer_502: str | None = None
    answer_504: str | None = None
    expect_proxy: bool = False
    sticky_name: str | None = DEFAULT_STICKY_NAME   # None on tcp listeners
    tls_versions: tuple[str, ...] = ()             # https only
    cipher_list: str | None = None                 # https only
    alpn: tuple[str, ...] = ()                     # https only: ALPN protocols, preferred first
    http2_max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS  # https, h2c
    h2c_prior_knowledge: bool = False              # http only: HTTP/2 without TLS (docs/http2.md)
    # The effective timeouts: the listener's own, else the global ones.
    front_timeout: int = _TIMEOUT["front_timeout"]
    back_timeout: int = _TIMEOUT["back_timeout"]
    connect_timeout: int = _TIMEOUT["connect_timeout"]
    request_timeout: int = _TIMEOUT["request_timeout"]  # unused by tcp listeners


@dataclass(frozen=True)
class FrontendConfig:
    address: str
    hostname: str | None = None        # lower-case; None for tcp
    path_begin: str = ""
    # Routing rules (docs/routing.md): these fields name the TOML keys only; what they say is
    # checked by the order schema and kept, normalised as in ADD_HTTP_FRONT, in `rules`.
    # `path` with `path_type` is Sozu 2's spelling of its `path: {kind, value}`.
    path: str | None = None
    path_type: str = "PREFIX"
    methods: tuple[str, ...] = ()
    redirect: dict | None = None
    rewrite: dict | None = None
    request_headers: tuple = ()
    response_headers: tuple = ()
    rules: dict = dataclasses.field(default_factory=dict)   # not a TOML key
    certificate: str | None = None     # PEM of the leaf certificate
    key: str | None = None             # PEM of its private key
    certificate_chain: tuple[str, ...] = ()   # PEM blocks, leaf excluded
    certificate_path: str | None = None       # absolute; for people, not for orders


@dataclass(frozen=True)
class BackendConfig:
    address: str
    backend_id: str
    weight: int = DEFAULT_WEIGHT
    sticky_id: str | None = None
    backup: bool = False


@dataclass(frozen=True)
class ApplicationConfig:
    app_id: str
    protocol: str = "http"             # http | tcp
    sticky_session: bool = False
    https_redirect: bool = False
    send_proxy: bool = False
    send_proxy_version: int = 2        # the PROXY protocol version sent: 2, or 1 for old backends
    load_balancing_policy: str = DEFAULT_POLICY.lower()   # as spelled in the file
    frontends: tuple[FrontendConfig, ...] = ()
    backends: tuple[BackendConfig, ...] = ()
    answer_503: str | None = None
    answer_400: str | None = None
    answer_404: str | None = None
    answer_408: str | None = None
    answer_413: str | None = None
    answer_502: str | None = None
    answer_504: str | None = None
    health_check: dict | None = None   # the normal form of the order's (docs/health-checks.md)


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: where the figures go (docs/metrics.md); nothing unless set."""
    prometheus: str | None = None      # IP:PORT answering GET /metrics
    address: str | None = None         # statsd: IP:PORT receiving UDP datagrams
    prefix: str = "sozu"               # statsd: of every metric name
    tagged_metrics: bool = False       # statsd: labels as DogStatsD tags, else in the names
    flush_interval: int = 1            # statsd: seconds between two sends


@dataclass(frozen=True)
class EtcdProviderConfig:
    """[provider.etcd]: the etcd whose keys the provider follows (docs/etcd.md)."""
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)  # tried in turn
    prefix: str = "/sozu/"
    ca_certificate: str | None = None  # https endpoints: the CA that signed etcd's certificate
    certificate: str | None = None     # a TLS client certificate, with its key
    key: str | None = None
    user: str | None = None            # etcd authentication, with password
    password: str | None = None
    addresses: tuple[tuple[str, str], ...] = ()  # (listener address in etcd, this proxy's own)
    heartbeat: int = 5                 # s: how often a silent watch is checked for
    timeout: int = 5                   # s: one request to etcd


@dataclass(frozen=True)
class ProviderConfig:
    """[provider]: where the configuration comes from besides the command socket."""
    etcd: EtcdProviderConfig | None = None


@dataclass(frozen=True)
class SandboxConfig:
    """The `sandbox` table: the worker's system call filter (sozu.seccomp)."""
    seccomp: bool = True               # on where the kernel supports it (a warning where not)
    seccomp_action: str = "kill"       # kill | eperm | log: what a call off the list does


@dataclass(frozen=True)
class Config:
    path: str                          # absolute path of the file
    command_socket: str                # absolute
    saved_state: str | None = None
    automatic_state_save: bool = False
    log_level: str = log_filter.DEFAULT_LEVEL
    log_target: str = "stdout"         # stdout | stderr | file:///absolute/path
    log_access_target: str = "stdout"  # the same, or off
    log_access_format: str = "text"    # text | json (one object per line)
    worker_count: int = 2
    worker_automatic_restart: bool = True
    max_connections: int = 10000
    buffer_size: int = 16384
    front_timeout: int = _TIMEOUT["front_timeout"]
    back_timeout: int = _TIMEOUT["back_timeout"]
    connect_timeout: int = _TIMEOUT["connect_timeout"]
    request_timeout: int = _TIMEOUT["request_timeout"]
    pid_file_path: str | None = None
    user: str = "nobody"
    group: str = "nogroup"
    chroot: str | None = None
    sandbox: SandboxConfig = SandboxConfig()
    ctl_command_timeout: int = 1000    # ms: the master waits this long for workers' answers
    worker_heartbeat_timeout: int = 10  # s: a silent worker is killed and replaced
    shutdown_grace_period: int = 30    # s: soft stop / upgrade drain bound, then hard close
    max_command_message_size: int = 1_000_000  # bytes: one command-socket message
    listeners: tuple[ListenerConfig, ...] = ()
    applications: tuple[ApplicationConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    provider: ProviderConfig = ProviderConfig()
    explicit: frozenset[str] = frozenset()  # the top-level keys the file sets (not a TOML key)

    def to_orders(self) -> list[Order]:
        """Listeners (each added, then activated), certificates, applications, backends, fronts."""
        orders: list[Order] = []
        protocols = {listener.address: listener.protocol for listener in self.listeners}
        for listener in self.listeners:
            orders.append(Order(f"ADD_{listener.protocol.upper()}_LISTENER", _listener_data(listener)))
            orders.append(Order("ACTIVATE_LISTENER", {"front": listener.address,
                                                      "proxy": listener.protocol.upper(), "from_scm": False}))
        added = set()
        for front in (front for app in self.applications for front in app.frontends):
            if front.certificate is not None and (front.address, front.certificate) not in added:
                added.add((front.address, front.certificate))
                orders.append(Order("ADD_CERTIFICATE", {"front": front.address, "names": [], "certificate": {
                    "certificate": front.certificate, "key": front.key,
                    "certificate_chain": list(front.certificate_chain)}}))
        for app in self.applications:
            orders.append(Order("ADD_APPLICATION", {
                "app_id": app.app_id, "sticky_session": app.sticky_session,
                "https_redirect": app.https_redirect,
                "proxy_protocol": "SendHeader" if app.send_proxy else None,
                "send_proxy_version": app.send_proxy_version,
                "load_balancing_policy": POLICY_BY_LOWER_NAME[app.load_balancing_policy],
                "answer_503": app.answer_503, **_answers(app, (503,))}))
        for app in self.applications:
            for backend in app.backends:
                orders.append(Order("ADD_BACKEND", {
                    "app_id": app.app_id, "backend_id": backend.backend_id, "address": backend.address,
                    "sticky_id": backend.sticky_id, "backup": backend.backup,
                    "load_balancing_parameters": {"weight": backend.weight}}))
        orders += [Order("SET_HEALTH_CHECK", {"app_id": app.app_id, "health_check": app.health_check})
                   for app in self.applications if app.health_check is not None]
        for app in self.applications:
            for front in app.frontends:
                if app.protocol == "tcp":
                    orders.append(Order("ADD_TCP_FRONT", {"app_id": app.app_id, "address": front.address}))
                else:
                    orders.append(Order(f"ADD_{protocols[front.address].upper()}_FRONT", {
                        "app_id": app.app_id, "address": front.address,
                        "hostname": front.hostname, "path_begin": front.path_begin,
                        **front.rules}))
        return orders

    def summary(self) -> str:
        """`2 listeners, 3 applications, 5 backends`."""
        counts = ((len(self.listeners), "listener"), (len(self.applications), "application"),
                  (sum(len(app.backends) for app in self.applications), "backend"))
        return ", ".join(f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in counts)


def _answers(settings, sozu_011: tuple[int, ...]) -> dict:
    """The answer_NNN order fields given besides Sozu 0.11's (those are always sent)."""
    return {f"answer_{status}": getattr(settings, f"answer_{status}") for status in answers.CUSTOM_STATUSES
            if status not in sozu_011 and getattr(settings, f"answer_{status}") is not None}


def _listener_data(listener: ListenerConfig) -> dict:
    data = {"front": listener.address, "public_address": None, "expect_proxy": listener.expect_proxy,
            "front_timeout": listener.front_timeout, "back_timeout": listener.back_timeout,
            "connect_timeout": listener.connect_timeout}
    if listener.protocol != "tcp":
        data.update(_answers(listener, (404, 503)))
        data.update(answer_404=listener.answer_404, answer_503=listener.answer_503,
                    sticky_name=listener.sticky_name, request_timeout=listener.request_timeout)
    if listener.protocol == "https":
        data.update(versions=list(listener.tls_versions), cipher_list=listener.cipher_list,
                    alpn=list(listener.alpn),
                    http2_max_concurrent_streams=listener.http2_max_concurrent_streams)
    if listener.h2c_prior_knowledge:
        data.update(h2c_prior_knowledge=True,
                    http2_max_concurrent_streams=listener.http2_max_concurrent_streams)
    return data


# --- entry points ----------------------------------------------------------------------------

def load(path: str) -> Config:
    return parse(_read(path), path)


def command_socket(path: str) -> str:
    """The command socket's absolute path, and nothing else of the file: all sozuctl needs to
    reach the proxy. The rest is not read, so a certificate gone bad or a typo elsewhere in the
    file does not stop an operator from looking (docs/architecture.md, "sozuctl")."""
    data = _toml(_read(path), path)
    if "command_socket" not in data:
        close = difflib.get_close_matches("command_socket", [str(key) for key in data], n=1)
        raise ConfigError(path, "command_socket", "missing required key" +
                          (f" (the file has {close[0]})" if close else ""))
    top = _Table(_Context(path, os.path.dirname(os.path.abspath(path))),
                 {"command_socket": data["command_socket"]}, "", _CommandSocketOnly)
    return _command_socket(top, data)


@dataclass(frozen=True)
class _CommandSocketOnly:
    command_socket: str


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the configuration file: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text (byte {e.start})") from None


def _toml(text: str, path: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, "invalid TOML: " + " ".join(str(e).split())) from None


def _command_socket(top: "_Table", data: dict) -> str:
    path = top.path("command_socket")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise top.error("command_socket", f"too long for a unix socket: {path}",
                        data["command_socket"], f"at most {UNIX_PATH_MAX} bytes once absolute")
    return path


def check(path: str) -> str:
    """`sozu config check`: `<file>: OK, <summary>`, or ConfigError."""
    config = load(path)
    config.to_orders()
    return f"{path}: OK, {config.summary()}"


_SECONDS = (1, MAX_TIMEOUT, " (seconds)")
_TOP_INTEGERS = {
    "worker_count": (1, 64, ""), "max_connections": (1, 1_000_000, ""),
    "buffer_size": (1024, 1_048_576, " (bytes)"), "front_timeout": _SECONDS, "back_timeout": _SECONDS,
    "connect_timeout": _SECONDS, "request_timeout": _SECONDS,
    "ctl_command_timeout": (1, MAX_TIMEOUT * 1000, " (milliseconds)"),
    "worker_heartbeat_timeout": _SECONDS, "shutdown_grace_period": _SECONDS,
    "max_command_message_size": (4096, 64 << 20, " (bytes)"),
}


def parse(text: str, path: str) -> Config:
    """`path` names the file in messages and anchors relative paths."""
    data = _toml(text, path)
    top = _Table(_Context(path, os.path.dirname(os.path.abspath(path))), data, "", Config, ("path", "explicit"))
    settings = {"path": os.path.abspath(path), "command_socket": _command_socket(top, data)}
    settings["saved_state"] = top.path("saved_state", None)
    settings["automatic_state_save"] = top.boolean("automatic_state_save")
    if settings["automatic_state_save"] and settings["saved_state"] is None:
        raise top.error("automatic_state_save", "needs saved_state", True, "saved_state to be set too")
    settings["log_level"] = top.string("log_level")
    try:
        log_filter.parse(settings["log_level"])
    except log_filter.LogFilterError as e:
        raise top.error("log_level", str(e), settings["log_level"],
                        f"LEVEL or LEVEL,logger=LEVEL,... with LEVEL among {', '.join(log_filter.LEVELS)}") from None
    settings["log_target"] = top.log_target("log_target", allow_off=False)
    settings["log_access_target"] = top.log_target("log_access_target", allow_off=True)
    settings["log_access_format"] = top.choice("log_access_format", ("text", "json"))
    for name, (lo, hi, unit) in _TOP_INTEGERS.items():
        settings[name] = top.integer(name, lo, hi, unit=unit)
    settings["worker_automatic_restart"] = top.boolean("worker_automatic_restart")
    settings["pid_file_path"] = top.path("pid_file_path", None)
    for name in ("user", "group"):
        settings[name] = top.string(name, expected=f"a {name} name or id", pattern=_ACCOUNT)
    settings["chroot"] = top.path("chroot", None, empty_is_none=True)
    settings["sandbox"] = _parse_sandbox(top)
    listeners = _parse_listeners(top, settings)
    applications = _parse_applications(top, {listener.address: listener for listener in listeners})
    return Config(listeners=listeners, applications=applications, metrics=_parse_metrics(top),
                  provider=_parse_provider(top), explicit=frozenset(data), **settings)


def _parse_sandbox(top: _Table) -> SandboxConfig:
    value = top.data.get("sandbox", {})
    if not isinstance(value, dict):
        raise top.error("sandbox", "wrong type", value, "a table, like sandbox = { seccomp = true }")
    table = _Table(top.ctx, value, "sandbox", SandboxConfig)
    return SandboxConfig(seccomp=table.boolean("seccomp"),
                         seccomp_action=table.choice("seccomp_action", SECCOMP_ACTIONS))


_STATSD_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _parse_metrics(top: _Table) -> MetricsConfig:
    value = top.data.get("metrics", {})
    if not isinstance(value, dict):
        raise top.error("metrics", "wrong type", value, "a table [metrics]")
    table = _Table(top.ctx, value, "metrics", MetricsConfig)
    return MetricsConfig(
        prometheus=table.address("prometheus", connectable=False) if "prometheus" in value else None,
        address=table.address("address", connectable=True) if "address" in value else None,
        prefix=table.string("prefix", expected="letters, digits, '_', '.' or '-'", pattern=_STATSD_PREFIX),
        tagged_metrics=table.boolean("tagged_metrics"),
        flush_interval=table.integer("flush_interval", 1, 3600, unit=" (seconds)"))


_ENDPOINT = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


def _together(table: _Table, first: str, first_value, second: str, second_value) -> None:
    """Two settings that go together: both set, or neither."""
    if (first_value is None) != (second_value is None):
        raise table.error(second if first_value is not None else first, "missing required key",
                          expected=f"{first} and {second} together")


def _parse_provider(top: _Table) -> ProviderConfig:
    value = top.data.get("provider", {})
    if not isinstance(value, dict):
        raise top.error("provider", "wrong type", value, "a table [provider]")
    provider = _Table(top.ctx, value, "provider", ProviderConfig)
    if "etcd" not in value:
        return ProviderConfig()
    if not isinstance(value["etcd"], dict):
        raise provider.error("etcd", "wrong type", value["etcd"], "a table [provider.etcd]")
    table = _Table(top.ctx, value["etcd"], "provider.etcd", EtcdProviderConfig)
    endpoints = table.array("endpoints", "a list of http://HOST:PORT or https://HOST:PORT")
    expected = "http://HOST:PORT or https://HOST:PORT"
    for endpoint in endpoints:
        if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint):
            raise table.error("endpoints", "invalid endpoint", endpoint, expected)
    prefix = table.string("prefix", expected="a key prefix like /sozu/")
    if not prefix.startswith("/"):
        raise table.error("prefix", "invalid value", prefix, "a key prefix starting with /")
    paths = {name: table.path(name, None) for name in ("ca_certificate", "certificate", "key")}
    _together(table, "certificate", paths["certificate"], "key", paths["key"])
    user, password = table.string("user", None), table.string("password", None)
    _together(table, "user", user, "password", password)
    mapping = value["etcd"].get("addresses", {})
    if not isinstance(mapping, dict):
        raise table.error("addresses", "wrong type", mapping,
                          'a table of "ADDRESS IN ETCD" = "ADDRESS HERE"')
    pairs = []
    for there, here in mapping.items():
        try:
            pairs.append((addresses.parse(there), addresses.parse(here)))
        except (addresses.AddressError, TypeError, AttributeError):
            raise ConfigError(top.ctx.file, f'provider.etcd.addresses."{there}"', "invalid value",
                              here, "IP:PORT = IP:PORT") from None
    return ProviderConfig(EtcdProviderConfig(
        endpoints=tuple(endpoints) or EtcdProviderConfig.endpoints, addresses=tuple(pairs),
        prefix=prefix.rstrip("/") + "/", user=user, password=password,
        heartbeat=table.integer("heartbeat", 1, 3600, unit=" (seconds)"),
        timeout=table.integer("timeout", 1, 600, unit=" (seconds)"), **paths))


# --- reading tables --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    file: str                          # as given, for messages
    base: str                          # the absolute directory relative paths start from


def _dotted(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{key}" if path else key


def _show(value) -> str:
    """A value as TOML spells it, on one line, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{_dotted('', k)} = {_show(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Table:
    """One TOML table at a dotted path, read as the dataclass `schema`; unknown keys refused."""

    def __init__(self, ctx: _Context, data: dict, path: str, schema, exclude=(), whole=False):
        self.ctx, self.data, self.prefix = ctx, data, path
        self.whole = whole             # the table stands for one value: a backend written as a string
        fields = [f for f in dataclasses.fields(schema) if f.name not in exclude]
        self.defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        allowed = [f.name for f in fields]
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                raise ConfigError(ctx.file, _dotted(path, key),
                                  "unknown key" + (f", did you mean {close[0]}?" if close else ""),
                                  expected="one of " + ", ".join(allowed))

    def key(self, name) -> str:
        return self.prefix if self.whole else _dotted(self.prefix, name)

    def error(self, name, what: str, got=_NOTHING, expected=None) -> ConfigError:
        return ConfigError(self.ctx.file, self.key(name), what, got, expected)

    def value(self, name, default, expected):
        """(value, given); a missing key gives the default, or an error when there is none."""
        if name in self.data:
            return self.data[name], True
        default = self.defaults.get(name, _REQUIRED) if default is _NOTHING else default
        if default is _REQUIRED:
            raise self.error(name, "missing required key", expected=expected)
        return default, False

    def integer(self, name, lo: int, hi: int, default=_NOTHING, unit="") -> int:
        expected = f"an integer {lo:_}..{hi:_}{unit}"
        value, given = self.value(name, default, expected)
        if given and type(value) is not int:          # TOML booleans are no numbers
            raise self.error(name, "wrong type", value, expected)
        if given and not lo <= value <= hi:
            raise self.error(name, "out of range", value, expected)
        return value

    def boolean(self, name, default=_NOTHING) -> bool:
        value, given = self.value(name, default, "true or false")
        if given and type(value) is not bool:
            raise self.error(name, "wrong type", value, "true or false")
        return value

    def string(self, name, default=_NOTHING, expected="a non-empty string", pattern=None,
               allow_empty=False) -> str | None:
        value, given = self.value(name, default, expected)
        if given and not isinstance(value, str):
            raise self.error(name, "wrong type", value, expected)
        if given and not value and not allow_empty:
            raise self.error(name, "empty string", value, expected)
        if given and value and pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, "invalid value", value, expected)
        return value

    def choice(self, name, choices, default=_NOTHING) -> str:
        expected = "one of " + ", ".join(choices)
        value = self.string(name, default, expected)
        if value not in choices:
            raise self.error(name, "invalid value", value, expected)
        return value

    def path(self, name, default=_NOTHING, empty_is_none=False) -> str | None:
        if empty_is_none and self.data.get(name) == "":
            return None
        value = self.string(name, default, "a path (relative to the config file's directory)")
        return None if value is None else os.path.normpath(os.path.join(self.ctx.base, value))

    def log_target(self, name, allow_off: bool) -> str:
        forms = "stdout, stderr, file:///absolute/path, file://relative/path" + " or off" * allow_off
        value = self.string(name, expected=forms)
        if value in ("stdout", "stderr") or (allow_off and value == "off"):
            return value
        if value.startswith("file://") and value[7:] and not value.endswith("/"):
            return "file://" + os.path.normpath(os.path.join(self.ctx.base, value[7:]))
        raise self.error(name, "invalid log target", value, forms)

    def array(self, name, expected: str) -> list:
        value, given = self.value(name, [], expected)
        if given and not isinstance(value, list):
            raise self.error(name, "wrong type", value, expected)
        return value

    def tables(self, name, schema, expected: str, exclude=()):
        """The items of an array of tables, each as a _Table."""
        for index, item in enumerate(self.array(name, expected)):
            path = _dotted(self.key(name), index)
            if not isinstance(item, dict):
                raise ConfigError(self.ctx.file, path, "wrong type", item, "a table")
            yield _Table(self.ctx, item, path, schema, exclude)

    def address(self, name, connectable=False) -> str:
        raw = self.string(name, expected="a numeric IP:PORT like 127.0.0.1:8080")
        try:
            address = addresses.parse(raw)
        except addresses.AddressError as e:
            raise self.error(name, e.args[0], raw, e.args[1]) from None
        if connectable and addresses.split(address)[0].is_unspecified:
            raise self.error(name, "unspecified address", raw, "an address one can connect to")
        return address

    def read(self, name, expected: str) -> str | None:
        """The UTF-8 text of the file named by `name`, or None when the key is absent."""
        path = self.path(name, None)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_NAMED_FILE_SIZE + 1)
        except OSError as e:
            raise self.error(name, f"cannot read {path}: {e.strerror}", self.data[name], expected) from None
        if len(raw) > MAX_NAMED_FILE_SIZE:
            raise self.error(name, f"{path} is larger than {MAX_NAMED_FILE_SIZE} bytes", self.data[name],
                             expected)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(name, f"{path} is not UTF-8 text", self.data[name], expected) from None

    def answer(self, name) -> str | None:
        """The text of a custom answer file, checked as the order schema checks it."""
        expected = 'a raw HTTP response file, starting with a status line like "HTTP/1.1 503 Unavailable"'
        text = self.read(name, expected)
        if text is not None and not _STATUS_LINE.match(text):
            raise self.error(name, f"{self.path(name)} is not an HTTP response", self.data[name], expected)
        if text is not None and "\n\n" not in text.replace("\r\n", "\n"):
            raise self.error(name, f"{self.path(name)} has no empty line after its headers", self.data[name],
                             "a raw HTTP response: status line, headers, empty line, body")
        if text is not None:
            try:
                answers.check(text)
            except ValueError as e:
                raise self.error(name, f"{self.path(name)} is not a valid HTTP answer: {e}", self.data[name],
                                 expected) from None
        return text

    def refuse(self, names, why: str, expected: str) -> None:
        """Keys valid elsewhere but not here (tls_versions on an http listener)."""
        for name in names:
            if name in self.data:
                raise self.error(name, why, self.data[name], expected)


# --- listeners -------------------------------------------------------------------------------

def _parse_listeners(top: _Table, settings: dict) -> tuple[ListenerConfig, ...]:
    listeners, seen = [], {}
    for table in top.tables("listeners", ListenerConfig, "an array of tables ([[listeners]])"):
        protocol = table.choice("protocol", ("http", "https", "tcp"), default=_REQUIRED)
        address = table.address("address")
        _check_bind(table, address, seen)
        seen[address] = table.key("address")
        if protocol != "https":
            table.refuse(("tls_versions", "cipher_list", "alpn"), "only for https listeners",
                         f"no such key on {protocol} listeners")
        if protocol != "http":
            table.refuse(("h2c_prior_knowledge",), "only for http listeners",
                         f"no such key on {protocol} listeners")
        h2c = protocol == "http" and table.boolean("h2c_prior_knowledge")
        if protocol == "tcp" or (protocol == "http" and not h2c):
            table.refuse(("http2_max_concurrent_streams",),
                         "only for https listeners and http listeners with h2c_prior_knowledge",
                         "h2c_prior_knowledge = true beside it" if protocol == "http"
                         else "no such key on tcp listeners")
        if protocol == "tcp":
            table.refuse(_ANSWER_KEYS + ("sticky_name", "request_timeout"),
                         "only for http and https listeners", "no such key on tcp listeners")
        timeouts = {name: table.integer(name, 1, MAX_TIMEOUT, default=settings[name], unit=" (seconds)")
                    for name in ("front_timeout", "back_timeout", "connect_timeout", "request_timeout")}
        listeners.append(ListenerConfig(
            protocol=protocol, address=address,
            **{name: table.answer(name) for name in _ANSWER_KEYS},
            expect_proxy=table.boolean("expect_proxy"),
            sticky_name=None if protocol == "tcp" else table.string(
                "sticky_name", expected="a cookie name (letters, digits, !#$%&'*+-.^_`|~)", pattern=_TOKEN),
            tls_versions=_tls_versions(table) if protocol == "https" else (),
            cipher_list=_cipher_list(table) if protocol == "https" else None,
            alpn=_alpn(table) if protocol == "https" else (),
            http2_max_concurrent_streams=table.integer(
                "http2_max_concurrent_streams", 1, MAX_CONCURRENT_STREAMS,
                default=DEFAULT_MAX_CONCURRENT_STREAMS)
            if protocol == "https" or h2c else DEFAULT_MAX_CONCURRENT_STREAMS,
            h2c_prior_knowledge=h2c,
            **timeouts))
    return tuple(listeners)


def _check_bind(table: _Table, address: str, seen: dict) -> None:
    """Two listeners on one address, or a wildcard and a specific address of one family on one
    port: the second bind would fail with EADDRINUSE at start, after the config said OK."""
    if address in seen:
        raise table.error("address", f"already used by {seen[address]}", table.data["address"],
                          "one listener per address")
    ip, port = addresses.split(address)
    for other, where in seen.items():
        other_ip, other_port = addresses.split(other)
        wildcard = ip.is_unspecified or other_ip.is_unspecified
        if port == other_port and ip.version == other_ip.version and wildcard:
            raise table.error("address", f"port {port} is already bound by {where} ({other})",
                              table.data["address"], "a distinct port, or the same wildcard listener")


def _tls_versions(table: _Table) -> tuple[str, ...]:
    if "tls_versions" not in table.data:
        return TLS_VERSIONS
    expected = "a non-empty array of " + ", ".join(f'"{v}"' for v in TLS_VERSIONS)
    value = table.array("tls_versions", expected)
    # The spellings orders take (sozu.vocabulary): one grammar for the file and the orders.
    versions = [TLS_VERSION_SPELLINGS.get(v.lower()) if isinstance(v, str) else None for v in value]
    if not value or None in versions or len(set(versions)) != len(versions):
        raise table.error("tls_versions", "invalid value", value, expected)
    return tuple(version for version in TLS_VERSIONS if version in versions)


def _alpn(table: _Table) -> tuple[str, ...]:
    if "alpn" not in table.data:
        return ALPN_PROTOCOLS
    expected = "a non-empty array of " + ", ".join(f'"{v}"' for v in ALPN_PROTOCOLS) + ", preferred first"
    value = table.array("alpn", expected)
    if not value or len(set(map(str, value))) != len(value) or not all(v in ALPN_PROTOCOLS for v in value):
        raise table.error("alpn", "invalid value", value, expected)
    return tuple(value)


def _cipher_list(table: _Table) -> str | None:
    expected = "an OpenSSL cipher list like ECDHE+AESGCM:!aNULL"
    value = table.string("cipher_list", None, expected=expected)
    if value is not None:
        from OpenSSL import SSL  # lazy: only a config with a cipher list pays for it
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(value.encode("ascii", "replace"))
        except SSL.Error:
            raise table.error("cipher_list", "OpenSSL matches no cipher", value, expected) from None
    return value


# --- applications ----------------------------------------------------------------------------

class _Owners:
    """What the applications read so far claim, to refuse what ConfigState would refuse."""

    def __init__(self):
        self.routes: dict = {}         # (address, hostname, path rule) -> dotted key
        self.tcp: dict = {}            # address -> dotted key
        self.backends: dict = {}       # (app_id, backend_id, address) -> dotted key
        self.certificates: dict = {}   # (address, leaf PEM) -> (key PEM, chain, dotted key)


def _parse_applications(top: _Table, listeners: dict) -> tuple[ApplicationConfig, ...]:
    value = top.data.get("applications", {})
    if not isinstance(value, dict):
        raise top.error("applications", "wrong type", value, "a table of applications ([applications.NAME])")
    owners, applications = _Owners(), []
    for app_id, data in value.items():
        path = _dotted("applications", app_id)
        if not _APP_ID.fullmatch(app_id):
            raise ConfigError(top.ctx.file, path, "invalid application name", app_id,
                              "1 to 128 letters, digits, '_', '.' or '-'")
        if not isinstance(data, dict):
            raise ConfigError(top.ctx.file, path, "wrong type", data, f"a table [{path}]")
        table = _Table(top.ctx, data, path, ApplicationConfig, ("app_id",))
        applications.append(_parse_application(table, app_id, listeners, owners))
    return tuple(applications)


def _parse_application(table: _Table, app_id: str, listeners: dict, owners: _Owners) -> ApplicationConfig:
    protocol = table.choice("protocol", ("http", "tcp"))
    if protocol == "tcp":
        table.refuse(("sticky_session", "https_redirect") + _ANSWER_KEYS, "only for http applications",
                     "no such key on tcp applications")
    frontends = tuple(_parse_frontend(front, app_id, protocol, listeners, owners) for front in table.tables(
        "frontends", FrontendConfig, "an array of frontend tables", ("certificate_path", "rules")))
    if not table.data.get("send_proxy"):
        table.refuse(("send_proxy_version",), "only with send_proxy = true", "send_proxy = true first")
    items = table.array("backends", 'an array of "IP:PORT" strings or backend tables')
    backends = tuple(_parse_backend(table, index, item, app_id, owners) for index, item in enumerate(items))
    return ApplicationConfig(
        app_id=app_id, protocol=protocol, frontends=frontends, backends=backends,
        health_check=_health_check(table, protocol),
        sticky_session=table.boolean("sticky_session"), https_redirect=table.boolean("https_redirect"),
        send_proxy=table.boolean("send_proxy"), **{name: table.answer(name) for name in _ANSWER_KEYS},
        send_proxy_version=table.integer("send_proxy_version", 1, 2),
        load_balancing_policy=table.choice("load_balancing_policy", tuple(POLICY_BY_LOWER_NAME)))


def _health_check(table: _Table, protocol: str) -> dict | None:
    """The order's own check (sozu.messages.health_check) is the one validation; its field
    path becomes the dotted key. The protocol defaults to the application's."""
    raw = table.data.get("health_check")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise table.error("health_check", "wrong type", raw, "a table [applications.NAME.health_check]")
    try:
        return health_check({"protocol": protocol, **raw})
    except MessageError as error:
        key = table.key("health_check")
        if error.field:
            name, sep, index = error.field.partition("[")
            key = _dotted(key, name) + sep + index
        raise ConfigError(table.ctx.file, key, error.text) from None


def _parse_frontend(table: _Table, app_id: str, protocol: str, listeners: dict,
                    owners: _Owners) -> FrontendConfig:
    address = table.address("address")
    kinds = ("http", "https") if protocol == "http" else ("tcp",)
    listener = listeners.get(address)
    if listener is None or listener.protocol not in kinds:
        candidates = ", ".join(a for a, other in listeners.items() if other.protocol in kinds)
        candidates = candidates or "none declared"
        wanted = "an http or https" if protocol == "http" else "a tcp"
        what = f"this is {_A[listener.protocol]} listener" if listener else "no listener at this address"
        raise table.error("address", what, table.data["address"],
                          f"the address of {wanted} listener for {_A[protocol]} application ({candidates})")
    if protocol == "tcp":
        table.refuse(("hostname", "path_begin", "certificate", "key", "certificate_chain") + _RULE_KEYS,
                     "only for http applications", "a tcp frontend has only an address")
        if address in owners.tcp:
            raise table.error("address", f"already routed by {owners.tcp[address]}", table.data["address"],
                              "one tcp application per tcp listener")
        owners.tcp[address] = table.key("address")
        return FrontendConfig(address=address)
    raw = table.string("hostname", _REQUIRED, expected="a host name like example.com or *.example.com")
    try:
        hostname = normalize_hostname(raw)
    except ValueError:
        raise table.error("hostname", "invalid host name", raw,
                          "a host name like example.com or *.example.com (no port, no scheme)") from None
    path_begin = table.string("path_begin", expected='"" or a path prefix starting with "/"',
                              pattern=_PATH_BEGIN, allow_empty=True)
    rules = _rules(table, app_id, address, hostname, path_begin)
    path_begin = rules.pop("path_begin")
    route = (address, hostname, front_rule({"path_begin": path_begin, **rules}))
    if route in owners.routes:
        raise table.error("hostname", f"the same address, hostname and path rule as {owners.routes[route]}",
                          raw, "each route once")
    owners.routes[route] = table.prefix
    if listener.protocol != "https":
        table.refuse(("certificate", "key", "certificate_chain"), "only on https listeners",
                     f"no certificate on a frontend of the http listener {address}")
        return FrontendConfig(address=address, hostname=hostname, path_begin=path_begin, rules=rules)
    return FrontendConfig(address=address, hostname=hostname, path_begin=path_begin, rules=rules,
                          **_certificate(table, address, owners))


_RULE_KEYS = ("path", "path_type", "methods", "redirect", "rewrite", "request_headers", "response_headers")


def _rules(table: _Table, app_id: str, address: str, hostname: str, path_begin: str) -> dict:
    """The rule fields of a frontend table, checked and normalised by the order schema itself
    (sozu.messages), its errors given the TOML key: one set of rules for the file and the orders."""
    data = {key: table.data[key] for key in _RULE_KEYS[2:] if key in table.data}
    if "path" in table.data:
        data["path"] = {"kind": table.data.get("path_type", "PREFIX"), "value": table.data["path"]}
    else:
        table.refuse(("path_type",), "needs path", "path to be set too")
    front = {"app_id": app_id, "address": address, "hostname": hostname, "path_begin": path_begin, **data}
    try:
        front = Order.from_json({"type": "ADD_HTTP_FRONT", "data": front}).data
    except MessageError as error:
        field, _, rest = error.field.partition(".")
        name, bracket, index = field.partition("[")
        if name == "path":
            name, rest = ("path_type" if rest == "kind" else "path"), ""
        key = table.key(name) + bracket + index + ("." + rest if rest else "")
        raise ConfigError(table.ctx.file, key, error.problem) from None
    return {key: value for key, value in front.items() if key not in ("app_id", "address", "hostname")}


def _parse_backend(app: _Table, index: int, item, app_id: str, owners: _Owners) -> BackendConfig:
    path = _dotted(app.key("backends"), index)
    if not isinstance(item, (str, dict)):
        raise ConfigError(app.ctx.file, path, "wrong type", item, 'an "IP:PORT" string or a backend table')
    whole = isinstance(item, str)
    table = _Table(app.ctx, {"address": item} if whole else item, path, BackendConfig, whole=whole)
    backend = BackendConfig(
        address=table.address("address", connectable=True),
        backend_id=table.string("backend_id", f"{app_id}-{index}", pattern=_NO_CONTROL,
                                expected="a backend id without control characters"),
        weight=table.integer("weight", 0, MAX_WEIGHT),
        sticky_id=table.string("sticky_id", pattern=_COOKIE_VALUE,
                               expected="a cookie value (no spaces, quotes, ',', ';' or '\\')"),
        backup=table.boolean("backup"))
    identity = (app_id, backend.backend_id, backend.address)
    if identity in owners.backends:
        raise table.error("address", f"the same backend_id and address as {owners.backends[identity]}",
                          backend.address, "each backend once")
    owners.backends[identity] = path
    return backend


# --- certificates ----------------------------------------------------------------------------

def _certificate(table: _Table, address: str, owners: _Owners) -> dict:
    if "certificate" not in table.data:
        table.refuse(("key", "certificate_chain"), "needs certificate", "certificate to be set too")
        return {}
    if "key" not in table.data:
        raise table.error("key", "missing required key", expected="the private key file of certificate")
    leaf, *chain = _pem_certificates(table, "certificate")     # a fullchain file: leaf first
    if "certificate_chain" in table.data:
        chain += _pem_certificates(table, "certificate_chain")
    key = _pem_key(table)
    _checked(table, leaf, key, chain)
    known = owners.certificates.setdefault((address, leaf), (key, chain, table.key("certificate")))
    if known[:2] != (key, chain):
        raise table.error("certificate", f"the same certificate as {known[2]} with another key or chain",
                          table.data["certificate"], "one key and chain per certificate on a listener")
    return {"certificate": leaf, "key": key, "certificate_chain": tuple(chain),
            "certificate_path": table.path("certificate")}


def _pem_blocks(table: _Table, name: str, expected: str, label) -> list[str]:
    text = table.read(name, expected)
    return [m.group(0) + "\n" for m in _PEM_BLOCK.finditer(text) if label(m.group(1))]


def _pem_certificates(table: _Table, name: str) -> list[str]:
    """The certificate blocks of a PEM file (checked with the key, in _checked)."""
    expected = "a PEM certificate file"
    blocks = _pem_blocks(table, name, expected, lambda label: label == "CERTIFICATE")
    if not blocks:
        raise table.error(name, f"no PEM certificate in {table.path(name)}", table.data[name], expected)
    return blocks


def _pem_key(table: _Table) -> str:
    """The one private key block of the key file (checked with the certificate, in _checked)."""
    expected = "an unencrypted PEM private key matching certificate"
    blocks = _pem_blocks(table, "key", expected, lambda label: label.endswith("PRIVATE KEY"))
    if len(blocks) != 1:
        raise table.error("key", f"{len(blocks)} PEM private keys in {table.path('key')}",
                          table.data["key"], expected)
    return blocks[0]


def _checked(table: _Table, leaf: str, key: str, chain: list[str]) -> None:
    """The check every certificate order gets at runtime (sozu.certificates), so a certificate
    that sozuctl would refuse is refused at start too; the error names the file."""
    from sozu import certificates  # lazy: only configs with certificates import cryptography
    try:
        certificates.check_certificate(leaf, key, chain)
    except certificates.CertificateError as error:
        field, _, problem = str(error).partition(": ")
        name = "key" if field == "key" else ("certificate_chain" if field.startswith("certificate_chain")
                                             and "certificate_chain" in table.data else "certificate")
        raise table.error(name, f"{table.path(name)}: {problem}", table.data[name],
                          "a valid certificate, its matching unencrypted key and chain") from None
