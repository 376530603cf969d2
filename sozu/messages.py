"""Orders, command requests and answers, and the NUL-terminated JSON framing (pure).

Theory of operation: everything that crosses the command socket, a worker channel or the
saved-state file is a JSON object. `from_json` is the one gate into the Python side: it checks
a decoded object against the schema of docs/orders.md, fills every default and normalises
spellings (addresses, host names, policy names), so two orders that mean the same thing compare
equal and `from_json(x.to_json()) == x`. Nothing behind the gate re-checks types.

Schemas are small tables of (field -> checker, default). A checker takes a value and returns its
normal form or raises `_Invalid` with the field path relative to itself; enclosing objects add
their part of the path on the way out, so the success path builds no strings at all.

Normalised data is plain dicts, lists, str, int, bool and None, treated as read-only once built:
`ConfigState` keeps the very dicts an order carries.
"""
from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sozu import address as addresses, log_filter
from sozu.vocabulary import (ALPN_PROTOCOLS, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_POLICY,
                             DEFAULT_STICKY_NAME, DEFAULT_WEIGHT, INSECURE_TLS_SPELLINGS,
                             LISTENER_TIMEOUTS, MAX_CONCURRENT_STREAMS, MAX_WEIGHT, POLICIES,
                             TLS_VERSION_SPELLINGS, TLS_VERSIONS)

from sozu.http import answers


class MessageError(ValueError):
    """A message or order that does not fit the protocol; the text names the field.

    `id` is the request id when it could be read, so an ERROR answer can carry it."""

    id: str | None = None
    field: str = ""  # for an order's data: the faulty field's path within it, and the problem
    problem: str = ""


class FrameTooLarge(MessageError):
    """An unterminated (or complete) message over the decoder's size limit: close the
    connection. `messages` holds what the same `feed` decoded before the oversize one."""

    def __init__(self, text: str, messages: list | None = None):
        super().__init__(text)
        self.messages = messages or []


class _Invalid(Exception):
    """A field failed its check; `path` is relative to the checker that raised it."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text

    def under(self, name: str) -> "_Invalid":
        if not self.path:
            self.path = name
        else:
            self.path = f"{name}{'' if self.path[0] == '[' else '.'}{self.path}"
        return self


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(expected: str, value: Any) -> _Invalid:
    return _Invalid("", f"expected {expected}, got {_show(value)}")


Checker = Callable[[Any], Any]
_REQUIRED = object()
_ABSENT = object()  # a default that leaves the field out of the normal form (see _front)

# --- value checkers ---------------------------------------------------------------------------


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad("a boolean", v)
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise _bad("a string", v)
    return v


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _name(v: Any) -> str:
    """An identifier (app_id, backend_id): non-empty, no control characters."""
    if type(v) is not str or not v or _CONTROL.search(v):
        raise _bad("a non-empty string without control characters", v)
    return v


def _nonempty(v: Any) -> str:
    if type(v) is not str or not v:
        raise _bad("a non-empty string", v)
    return v


def _log_filter(v: Any) -> str:
    """A log filter (sozu.log_filter), kept as written: workers apply the same text."""
    v = _nonempty(v)
    try:
        log_filter.parse(v)
    except log_filter.LogFilterError as e:
        raise _Invalid("", f"{e} in {_show(v)}") from None
    return v


def _int_range(low: int, high: int | None) -> Checker:
    expected = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"

    def check(v: Any) -> int:
        # bool is an int subclass; a JSON `true` is not a number here.
        if type(v) is not int or v < low or (high is not None and v > high):
            raise _bad(expected, v)
        return v
    return check


def _int_choice(choices: tuple[int, ...]) -> Checker:
    expected = "one of " + ", ".join(map(str, choices))

    def check(v: Any) -> int:
        if type(v) is not int or v not in choices:
            raise _bad(expected, v)
        return v
    return check


def _optional(check: Checker) -> Checker:
    def optional(v: Any) -> Any:
        return None if v is None else check(v)
    return optional


def _enum(canonical: Iterable[str]) -> Checker:
    """Case-, '_'- and '-'-insensitive spellings of a closed set, normalised to canonical."""
    canonical = tuple(canonical)
    table = {c.lower().replace("_", "").replace("-", ""): c for c in canonical}
    expected = "one of " + ", ".join(f'"{c}"' for c in canonical)

    def check(v: Any) -> str:
        if type(v) is str:
            found = table.get(v.lower().replace("_", "").replace("-", ""))
            if found is not None:
                return found
        raise _bad(expected, v)
    return check


def _list_of(check: Checker, unique: bool = False) -> Checker:
    def check_list(v: Any) -> list:
        if type(v) is not list:
            raise _bad("a list", v)
        out = []
        for i, item in enumerate(v):
            try:
                item = check(item)
            except _Invalid as e:
                raise e.under(f"[{i}]") from None
            if not unique or item not in out:
                out.append(item)
        return out
    return check_list


def _object(spec: dict[str, tuple[Checker, Any]]) -> Checker:
    """A JSON object with exactly these fields; absent ones get their default."""
    names = frozenset(spec)
    fields = tuple((name, check, default) for name, (check, default) in spec.items())

    def check_object(v: Any) -> dict:
        if type(v) is not dict:
            raise _bad("an object", v)
        if not names.issuperset(v):
            raise _Invalid(sorted(set(v) - names)[0], "unknown field")
        out = {}
        for name, check, default in fields:
            if name in v:
                try:
                    out[name] = check(v[name])
                except _Invalid as e:
                    raise e.under(name) from None
            elif default is _REQUIRED:
                raise _Invalid(name, "missing required field")
            elif default is _ABSENT:
                continue
            else:
                out[name] = list(default) if type(default) is list else default
        return out
    return check_object


def _none(v: Any) -> None:
    if v is not None:
        raise _bad("no data (null or absent)", v)
    return None


# --- addresses and names ----------------------------------------------------------------------

def _address(v: Any) -> str:
    if type(v) is not str:
        raise _bad('"IP:PORT"', v)
    try:
        return addresses.parse(v)
    except addresses.AddressError as e:
        what, expected = e.args
        raise _Invalid("", f'expected "IP:PORT", got {_show(v)} ({what}: {expected})') from None


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(\*\.)?{_LABEL}(?:\.{_LABEL})*\Z")


def normalize_hostname(value: str, wildcard: bool = True) -> str:
    """Lower-case DNS name (IDNA-encoded if not ASCII), optionally `*.` + a name, or an IP
    literal (IPv6 in brackets); ValueError otherwise."""
    host = value.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"expected a host name, got {_show(value)}") from None
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1])}]"
        except ValueError:
            raise ValueError(f"expected a host name, got {_show(value)}") from None
    m = _HOSTNAME.match(host)
    if m is None or len(host) > 253 or (m.group(1) and not wildcard):
        what = 'a host name like "example.com"'
        if wildcard:
            what += ' or "*.example.com"'
        raise ValueError(f"expected {what}, got {_show(value)}")
    return host


def _hostname(v: Any) -> str:
    if type(v) is not str:
        raise _bad("a host name", v)
    try:
        return normalize_hostname(v)
    except ValueError as e:
        raise _Invalid("", str(e)) from None


# A path prefix as it appears in a request target: printable ASCII, no spaces.
_PATH_BEGIN = re.compile(r"(?:/[!-~]*)?\Z")


def _path_begin(v: Any) -> str:
    if type(v) is not str or not _PATH_BEGIN.match(v):
        raise _bad('"" or a path starting with "/" (printable ASCII, no spaces)', v)
    return v


_FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")


def _fingerprint(v: Any) -> str:
    """Lower-case hex SHA-256; also accepts openssl's `AB:CD:...` form."""
    if type(v) is str:
        text = v.replace(":", "").lower()
        if _FINGERPRINT.match(text):
            return text
    raise _bad("a SHA-256 fingerprint (64 hex digits)", v)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token: a cookie name
_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]+\Z")  # RFC 6265 cookie-octet


def _cookie_name(v: Any) -> str:
    if type(v) is not str or not _TOKEN.match(v):
        raise _bad("a cookie name (letters, digits, !#$%&'*+-.^_`|~)", v)
    return v


def _cookie_value(v: Any) -> str:
    if type(v) is not str or not _COOKIE_VALUE.match(v):
        raise _bad("a cookie value (printable ASCII without space, quote, comma, ';' or '\\')",
                   v)
    return v


def _tls_versions(v: Any) -> list[str]:
    if type(v) is not list or not v:
        raise _bad('a non-empty list among "TLSv1.2", "TLSv1.3"', v)
    seen = set()
    for i, item in enumerate(v):
        key = item.lower() if type(item) is str else None
        if key in INSECURE_TLS_SPELLINGS:
            raise _Invalid(f"[{i}]", f"{item} is refused (insecure); use TLSv1.2 or TLSv1.3")
        if key not in TLS_VERSION_SPELLINGS:
            raise _Invalid(f"[{i}]", f'expected "TLSv1.2" or "TLSv1.3", got {_show(item)}')
        seen.add(TLS_VERSION_SPELLINGS[key])
    return [version for version in TLS_VERSIONS if version in seen]


_req = _REQUIRED

# --- http(s) frontends and their rules --------------------------------------------------------
#
# A front is matched by address, hostname, a path rule and optionally methods; it may then
# redirect, rewrite the host and path, and edit headers (docs/routing.md). Rule fields appear in
# the normal form only when used: a front without rules keeps its Sozu 0.11 shape (and the
# application hash it had). A path rule of kind PREFIX is normalised to `path_begin`.

PATH_KINDS = ("PREFIX", "EQUALS", "REGEX")
REDIRECT_STATUSES = (301, 302, 307, 308)
HEADER_ACTIONS = ("ADD", "SET", "REMOVE")
# Headers that frame the message or concern one hop only (RFC 9110 §7.6.1, RFC 9112 §6): an
# edit could make the message ambiguous to the next hop. Host is rewritten by `rewrite.host`.
UNEDITABLE_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "host",
                                "keep-alive", "te", "trailer", "upgrade", "proxy-connection"))
# Headers sozu sets itself on the way (docs/routing.md): an edit would be overwritten or dropped.
OWN_REQUEST_HEADERS = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-port",
                                 "forwarded", "sozu-id", "expect"))
OWN_RESPONSE_HEADERS = frozenset(("sozu-id",))
_PATH_VALUE = re.compile(r"/[!-~]*\Z")        # printable ASCII from "/", no space
_QUERY_VALUE = re.compile(r"[!-\"$-~]*\Z")    # printable ASCII, no space, no "#"
_HEADER_VALUE = re.compile(r"(?:[!-~](?:[\t !-~]*[!-~])?)?\Z")  # no CTL; no edge whitespace
_SCHEMES = ("http", "https")


def _regex(v: Any) -> str:
    """A Python `re` pattern, compiled here as the router does (over the UTF-8 bytes of
    request paths), so that a bad one is refused when the order arrives."""
    if type(v) is not str or not v:
        raise _bad("a non-empty regular expression", v)
    try:
        re.compile(v.encode("utf-8"))
    except (re.error, OverflowError, RecursionError, UnicodeEncodeError) as e:
        raise _Invalid("", f"bad regular expression {_show(v)}: {e}") from None
    return v


def _path_rule(v: Any) -> dict:
    rule = _object({"kind": (_enum(PATH_KINDS), "PREFIX"), "value": (_str, _req)})(v)
    check = {"PREFIX": _path_begin, "EQUALS": _path_value, "REGEX": _regex}[rule["kind"]]
    try:
        check(rule["value"])
    except _Invalid as e:
        raise e.under("value") from None
    return rule


def _path_value(v: Any) -> str:
    if type(v) is not str or not _PATH_VALUE.match(v):
        raise _bad('a path starting with "/" (printable ASCII, no spaces)', v)
    return v


def _method(v: Any) -> str:
    if type(v) is not str or not _TOKEN.match(v):
        raise _bad('an HTTP method like "GET"', v)
    return v.upper()


def _methods(v: Any) -> list[str]:
    methods = sorted(_list_of(_method, unique=True)(v))
    if not methods:
        raise _bad("a non-empty list of methods (leave the field out to match every method)", v)
    return methods


def _host_port(v: Any) -> str:
    """A host name or IP literal, optionally with a port: what a Host header may say."""
    if type(v) is str:
        host, port = v, None
        if ":" in v and not v.endswith("]"):  # "name:port" or "[v6]:port"
            host, _, port = v.rpartition(":")
        try:
            name = normalize_hostname(host, wildcard=False)
        except ValueError:
            name = None
        if name is not None and port is None:
            return name
        if name is not None and port.isdigit() and port[0] != "0" and int(port) <= 65535:
            return f"{name}:{port}"
    raise _bad('a host name, optionally with a port ("example.com", "example.com:8080")', v)


def _query_value(v: Any) -> str:
    if type(v) is not str or not _QUERY_VALUE.match(v) or v.startswith("?"):
        raise _bad('a query without "?" (printable ASCII, no spaces, no "#"), or "" for none', v)
    return v


def _replacement(v: Any) -> str:
    """A regex replacement: the groups' bytes and printable ASCII (no space), so that the path it
    makes is a valid request target."""
    if type(v) is not str or not re.fullmatch(r"[!-~]*", v):
        raise _bad("a replacement of printable ASCII without spaces (groups as \\1 or \\g<name>)", v)
    return v


_REDIRECT_FIELDS = _object({
    "status": (_int_choice(REDIRECT_STATUSES), 302),
    "scheme": (_optional(_enum(_SCHEMES)), None),
    "host": (_optional(_host_port), None),
    "port": (_optional(_int_range(1, 65535)), None),
    "path": (_optional(_path_value), None),
    "query": (_optional(_query_value), None),
})
_REWRITE = _object({
    "host": (_optional(_host_port), None),
    "strip_prefix": (_optional(_path_value), None),
    "path_regex": (_optional(_regex), None),
    "path_replacement": (_optional(_replacement), None),
})


def _rewrite(v: Any) -> dict:
    rewrite = _REWRITE(v)
    if (rewrite["path_regex"] is None) != (rewrite["path_replacement"] is None):
        raise _Invalid("path_replacement" if rewrite["path_regex"] else "path_regex",
                       "path_regex and path_replacement go together")
    if rewrite["path_regex"] is not None:
        # The replacement's group references are checked against the pattern's groups: the
        # pattern with an empty alternative matches "", and expanding there resolves them.
        try:
            re.compile(rewrite["path_regex"].encode("utf-8") + b"|").sub(
                rewrite["path_replacement"].encode("utf-8"), b"", count=1)
        except (re.error, IndexError, UnicodeEncodeError) as e:
            raise _Invalid("path_replacement", f"bad replacement "
                           f"{_show(rewrite['path_replacement'])}: {e}") from None
    if rewrite == {"host": None, "strip_prefix": None, "path_regex": None,
                   "path_replacement": None}:
        raise _bad("a rewrite of host, strip_prefix or path_regex", v)
    return rewrite


def _header_edits(own: frozenset[str]) -> Checker:
    def header_name(v: Any) -> str:
        if type(v) is not str or not _TOKEN.match(v):
            raise _bad('a header name like "X-Frame-Options"', v)
        lower = v.lower()
        if lower in UNEDITABLE_HEADERS or lower.startswith("proxy-"):
            hint = "; use rewrite.host" if lower == "host" else ""
            raise _Invalid("", f"{v} frames the message or is hop-by-hop: it cannot be edited{hint}")
        if lower in own:
            raise _Invalid("", f"{v} is set by sozu itself: it cannot be edited")
        return v

    fields = _object({"action": (_enum(HEADER_ACTIONS), _req), "name": (header_name, _req),
                      "value": (_str, "")})

    def header_edit(v: Any) -> dict:
        edit = fields(v)
        if edit["action"] == "REMOVE":
            if edit["value"]:
                raise _Invalid("value", "a REMOVE edit has no value")
        elif not _HEADER_VALUE.match(edit["value"]):
            raise _Invalid("value", "expected printable ASCII without surrounding spaces, got "
                           f"{_show(edit['value'])}")
        return edit
    return _list_of(header_edit)


_FRONT_FIELDS = _object({
    "app_id": (_name, _req),
    "address": (_address, _req),
    "hostname": (_hostname, _req),
    "path_begin": (_path_begin, ""),
    "path": (_path_rule, _ABSENT),
    "methods": (_methods, _ABSENT),
    "redirect": (_REDIRECT_FIELDS, _ABSENT),
    "rewrite": (_rewrite, _ABSENT),
    "request_headers": (_header_edits(OWN_REQUEST_HEADERS), _ABSENT),
    "response_headers": (_header_edits(OWN_RESPONSE_HEADERS), _ABSENT),
})


def _front(v: Any) -> dict:
    front = _FRONT_FIELDS(v)
    path = front.get("path")
    if path is not None:
        if front["path_begin"]:
            raise _Invalid("path", "give either path or path_begin, not both")
        if path["kind"] == "PREFIX":
            front["path_begin"] = path["value"]
            del front["path"]
    for name in ("request_headers", "response_headers"):
        if front.get(name) == []:
            del front[name]
    redirect = front.get("redirect")
    if redirect is not None and front.get("rewrite") is None and redirect["scheme"] is None \
            and all(redirect[k] is None for k in ("host", "port", "path", "query")):
        raise _Invalid("redirect", "this redirect would send the client to the URL it asked "
                       "for: give a scheme, host, port, path or query (or a rewrite)")
    return front


# --- order schemas ----------------------------------------------------------------------------

PROXY_PROTOCOLS = ("ExpectHeader", "SendHeader", "RelayHeader")
LISTENER_PROXIES = ("HTTP", "HTTPS", "TCP")

_timeout = _int_range(1, None)

def _answer(v: Any) -> str:
    """A custom answer template (sozu.http.answers): raw HTTP, checked as it will be sent."""
    if type(v) is not str:
        raise _bad("a raw HTTP answer", v)
    try:
        answers.check(v)
    except ValueError as e:
        raise _Invalid("", f"not a valid HTTP answer: {e}") from None
    return v


def _answers(sozu_011: tuple[int, ...]) -> dict:
    """The answer_NNN fields: Sozu 0.11's always in the normal form, the others when given."""
    return {f"answer_{status}": (_optional(_answer), None if status in sozu_011 else _ABSENT)
            for status in answers.CUSTOM_STATUSES}


_APPLICATION = _object({
    "app_id": (_name, _req),
    "sticky_session": (_bool, False),
    "https_redirect": (_bool, False),
    "proxy_protocol": (_optional(_enum(PROXY_PROTOCOLS)), None),
    # Not in Sozu 0.11: the PROXY protocol version sent to backends of SendHeader applications.
    "send_proxy_version": (_int_range(1, 2), 2),
    "load_balancing_policy": (_enum(POLICIES), DEFAULT_POLICY),
    **_answers((503,)),
})
_HTTP_FRONT = _front
_TCP_FRONT = _object({"app_id": (_name, _req), "address": (_address, _req)})
_BACKEND = _object({
    "app_id": (_name, _req),
    "backend_id": (_name, _req),
    "address": (_address, _req),
    "sticky_id": (_optional(_cookie_value), None),
    "load_balancing_parameters": (
        _optional(_object({"weight": (_int_range(0, MAX_WEIGHT), DEFAULT_WEIGHT)})), None),
    "backup": (_bool, False),
})
_BACKEND_REF = _object({
    "app_id": (_name, _req), "backend_id": (_name, _req), "address": (_address, _req)})
_NAMES = _list_of(_hostname, unique=True)

# Active health checks (docs/health-checks.md). Times are seconds (numbers); a check must end
# before the next one begins, so the timeout is at most the interval.
HEALTH_CHECK_PROTOCOLS = ("http", "tcp")
_CHECK_PATH = re.compile(r"/[!-~]*\Z")


def _seconds(low: float, high: float) -> Checker:
    expected = f"a number of seconds {low:g}..{high:g}"

    def check(v: Any) -> float:
        if type(v) not in (int, float) or not low <= v <= high:
            raise _bad(expected, v)
        return float(v)
    return check


def _check_path(v: Any) -> str:
    if type(v) is not str or not _CHECK_PATH.match(v):
        raise _bad('a path starting with "/" (printable ASCII, no spaces)', v)
    return v


def _statuses(v: Any) -> list[int]:
    return sorted(_list_of(_int_range(100, 599), unique=True)(v))


_HEALTH_CHECK_FIELDS = _object({
    "protocol": (_enum(HEALTH_CHECK_PROTOCOLS), "http"),
    "method": (_method, "GET"),
    "path": (_check_path, "/"),
    "host": (_optional(_hostname), None),
    "expected_statuses": (_statuses, []),
    "expected_body": (_optional(_nonempty), None),
    "interval": (_seconds(0.1, 3600), 2.0),
    "timeout": (_seconds(0.05, 60), 1.0),
    "rise": (_int_range(1, 100), 2),
    "fall": (_int_range(1, 100), 3),
})


def _health_check_object(v: Any) -> dict:
    check = _HEALTH_CHECK_FIELDS(v)
    if check["timeout"] > check["interval"]:
        raise _Invalid("timeout", f"expected at most the interval ({check['interval']:g} s), "
                                  f"got {check['timeout']:g}")
    return check


def health_check(value: Any) -> dict:
    """The normal form of a health check object; MessageError whose `field` names the field
    (the TOML reader reports it under its own dotted key)."""
    try:
        return _health_check_object(value)
    except _Invalid as e:
        error = MessageError(f"{e.path}: {e.text}" if e.path else e.text)
        error.field, error.text = e.path, e.text
        raise error from None


_SET_HEALTH_CHECK = _object({
    "app_id": (_name, _REQUIRED),
    "health_check": (_optional(_health_check_object), None),
})
# A verdict of the active checks, sent by the master to every worker.
_SET_BACKEND_HEALTH = _object({
    "app_id": (_name, _REQUIRED),
    "backend_id": (_name, _REQUIRED),
    "address": (_address, _REQUIRED),
    "up": (_bool, _REQUIRED),
    "since": (_seconds(0, 1e12), _REQUIRED),   # wall-clock time of the change
    "reason": (_optional(_str), None),
})
_CERTIFICATE = _object({
    "certificate": (_nonempty, _req),
    "certificate_chain": (_list_of(_nonempty), []),
    "key": (_nonempty, _req),
})
_ADD_CERTIFICATE = _object({
    "front": (_address, _req), "certificate": (_CERTIFICATE, _req), "names": (_NAMES, [])})
_REMOVE_CERTIFICATE = _object({
    "front": (_address, _req), "fingerprint": (_fingerprint, _req), "names": (_NAMES, [])})
_REPLACE_CERTIFICATE = _object({
    "front": (_address, _req),
    "new_certificate": (_CERTIFICATE, _req),
    "old_fingerprint": (_fingerprint, _req),
    "new_names": (_NAMES, []),
})
_LISTENER_COMMON = {
    "front": (_address, _req),
    "public_address": (_optional(_address), None),
}
_HTTP_LISTENER_SPEC = {
    **_LISTENER_COMMON,
    **_answers((404, 503)),
    "expect_proxy": (_bool, False),
    "sticky_name": (_cookie_name, DEFAULT_STICKY_NAME),
    "front_timeout": (_timeout, LISTENER_TIMEOUTS["front_timeout"]),
    "back_timeout": (_timeout, LISTENER_TIMEOUTS["back_timeout"]),
    "connect_timeout": (_timeout, LISTENER_TIMEOUTS["connect_timeout"]),
    "request_timeout": (_timeout, LISTENER_TIMEOUTS["request_timeout"]),
}
_http2_streams = _int_range(1, MAX_CONCURRENT_STREAMS)
# HTTP/2 by prior knowledge on a plain listener (docs/http2.md): absent unless given, which
# keeps Sozu 0.11's form of the order.
_HTTP_LISTENER = _object({**_HTTP_LISTENER_SPEC, "h2c_prior_knowledge": (_bool, _ABSENT),
                          "http2_max_concurrent_streams": (_http2_streams, _ABSENT)})


def _alpn(v: Any) -> list[str]:
    if type(v) is not list or not v or len(set(map(repr, v))) != len(v) or not all(
            item in ALPN_PROTOCOLS for item in v):
        raise _bad('a non-empty list among "h2", "http/1.1", without repeats', v)
    return v


_HTTPS_LISTENER = _object({
    **_HTTP_LISTENER_SPEC,
    "versions": (_tls_versions, list(TLS_VERSIONS)),
    "cipher_list": (_optional(_nonempty), None),
    "alpn": (_alpn, list(ALPN_PROTOCOLS)),
    "http2_max_concurrent_streams": (_http2_streams, DEFAULT_MAX_CONCURRENT_STREAMS),
})
_TCP_LISTENER = _object({
    **_LISTENER_COMMON,
    "expect_proxy": (_bool, False),
    "front_timeout": (_timeout, LISTENER_TIMEOUTS["front_timeout"]),
    "back_timeout": (_timeout, LISTENER_TIMEOUTS["back_timeout"]),
    "connect_timeout": (_timeout, LISTENER_TIMEOUTS["connect_timeout"]),
})
_proxy = _enum(LISTENER_PROXIES)
_REMOVE_LISTENER = _object({"front": (_address, _req), "proxy": (_proxy, _req)})
_ACTIVATE_LISTENER = _object({
    "front": (_address, _req), "proxy": (_proxy, _req), "from_scm": (_bool, False)})
_DEACTIVATE_LISTENER = _object({
    "front": (_address, _req), "proxy": (_proxy, _req), "to_scm": (_bool, False)})

_QUERY_TYPES = ("APPLICATIONS_HASHES", "APPLICATIONS", "CERTIFICATES", "BACKENDS")
_DOMAIN = _object({"hostname": (_hostname, _req), "path_begin": (_optional(_path_begin), None)})


def _tagged(v: Any, tags: tuple[str, ...]) -> tuple[str, Any]:
    """A Sozu `{type: TAG, data: ...}` object: returns (tag, raw data)."""
    if type(v) is not dict:
        raise _bad("an object", v)
    for key in v:
        if key not in ("type", "data"):
            raise _Invalid(key, "unknown field")
    if "type" not in v:
        raise _Invalid("type", "missing required field")
    if v["type"] not in tags:
        raise _Invalid("type", f"expected one of {', '.join(tags)}, got {_show(v['type'])}")
    return v["type"], v.get("data")


def _query(v: Any) -> dict:
    kind, data = _tagged(v, _QUERY_TYPES)
    try:
        if kind != "APPLICATIONS" or data is None:
            return {"type": kind, "data": _none(data)}
        sub, value = _tagged(data, ("APP_ID", "DOMAIN"))
        try:
            value = _name(value) if sub == "APP_ID" else _DOMAIN(value)
        except _Invalid as e:
            raise e.under("data") from None
        return {"type": kind, "data": {"type": sub, "data": value}}
    except _Invalid as e:
        raise e.under("data") from None


_STATE_CHECKS: dict[str, Checker] = {
    "ADD_APPLICATION": _APPLICATION,
    "REMOVE_APPLICATION": _name,
    "ADD_HTTP_FRONT": _HTTP_FRONT,
    "REMOVE_HTTP_FRONT": _HTTP_FRONT,
    "ADD_HTTPS_FRONT": _HTTP_FRONT,
    "REMOVE_HTTPS_FRONT": _HTTP_FRONT,
    "ADD_TCP_FRONT": _TCP_FRONT,
    "REMOVE_TCP_FRONT": _TCP_FRONT,
    "ADD_BACKEND": _BACKEND,
    "REMOVE_BACKEND": _BACKEND_REF,
    "SET_HEALTH_CHECK": _SET_HEALTH_CHECK,
    "SET_BACKEND_HEALTH": _SET_BACKEND_HEALTH,
    "ADD_CERTIFICATE": _ADD_CERTIFICATE,
    "REMOVE_CERTIFICATE": _REMOVE_CERTIFICATE,
    "REPLACE_CERTIFICATE": _REPLACE_CERTIFICATE,
    "ADD_HTTP_LISTENER": _HTTP_LISTENER,
    "ADD_HTTPS_LISTENER": _HTTPS_LISTENER,
    "ADD_TCP_LISTENER": _TCP_LISTENER,
    "REMOVE_LISTENER": _REMOVE_LISTENER,
    "ACTIVATE_LISTENER": _ACTIVATE_LISTENER,
    "DEACTIVATE_LISTENER": _DEACTIVATE_LISTENER,
}
_COMMAND_CHECKS: dict[str, Checker] = {
    "QUERY": _query,
    "SOFT_STOP": _none,
    "HARD_STOP": _none,
    "STATUS": _none,
    "METRICS": _optional(_enum(("ENABLE", "DISABLE", "CLEAR"))),
    "LOGGING": _log_filter,
}
_ORDER_CHECKS = {**_STATE_CHECKS, **_COMMAND_CHECKS}
# Orders for tests of the sandbox only: a worker makes a forbidden system call on purpose.
# They exist once enable_test_orders() was called (sozu.startup, when SOZU_TEST_ORDERS=1).
_TEST_CHECKS: dict[str, Checker] = {"TEST_FORBIDDEN_CALL": _enum(("execve", "ptrace"))}
TEST_ORDERS: frozenset[str] = frozenset(_TEST_CHECKS)

STATE_ORDERS: frozenset[str] = frozenset(_STATE_CHECKS)
COMMAND_ORDERS: frozenset[str] = frozenset(_COMMAND_CHECKS)


def enable_test_orders() -> None:
    _ORDER_CHECKS.update(_TEST_CHECKS)


@dataclass(frozen=True)
class Order:
    """One order. Build it with `from_json` (which also takes plain Python dicts): a directly
    constructed Order is not checked, and `ConfigState.dispatch` trusts its data's shape."""

    type: str
    data: Any = None

    @classmethod
    def from_json(cls, obj: Any) -> "Order":
        if type(obj) is not dict:
            raise MessageError(f"order: expected an object, got {_show(obj)}")
        kind = obj.get("type")
        if "type" not in obj:
            raise MessageError("order: type: missing required field")
        check = _ORDER_CHECKS.get(kind) if type(kind) is str else None
        if check is None:
            raise MessageError(f"order: type: unknown order type {_show(kind)}")
        for key in obj:
            if key != "type" and key != "data":
                raise MessageError(f"{kind}: {key}: unknown field")
        try:
            return cls(kind, check(obj.get("data")))
        except _Invalid as e:
            field, problem = e.path, e.text
            e.under("data")
            error = MessageError(f"{kind}: {e.path}: {e.text}")
            error.field, error.problem = field, problem
            raise error from None

    def to_json(self) -> dict:
        """The normalised JSON object (shares `data`: do not mutate it)."""
        return {"type": self.type, "data": self.data}


# --- requests and answers ---------------------------------------------------------------------

REQUEST_TYPES = frozenset({
    "PROXY", "SAVE_STATE", "LOAD_STATE", "DUMP_STATE", "LIST_WORKERS", "UPGRADE_MASTER",
    "UPGRADE_WORKER", "SUBSCRIBE_EVENTS", "PROVIDER_REPORT"})
_PATH = _object({"path": (_nonempty, _req)})
# A provider's word on what it could not apply (docs/etcd.md): the whole list each time, which
# replaces the one before; `sozuctl status` shows it.
PROVIDERS = ("etcd",)
_PROVIDER_REPORT = _object({
    "provider": (_enum(PROVIDERS), _req),
    "pid": (_int_range(1, None), _req),
    "refused": (_list_of(_object({"key": (_nonempty, _req), "reason": (_str, _req)})), _req),
})
_REQUEST_DATA: dict[str, Checker] = {
    "SAVE_STATE": _PATH,
    "LOAD_STATE": _PATH,
    "DUMP_STATE": _none,
    "LIST_WORKERS": _none,
    "UPGRADE_MASTER": _none,
    "UPGRADE_WORKER": _int_range(0, None),
    "SUBSCRIBE_EVENTS": _none,
    "PROVIDER_REPORT": _PROVIDER_REPORT,
}
_REQUEST_FIELDS = frozenset({"id", "version", "type", "data", "worker_id"})
_version = _int_range(0, None)


def _field(where: str, obj: dict, name: str, check: Checker, default: Any = _REQUIRED) -> Any:
    if name not in obj:
        if default is _REQUIRED:
            raise MessageError(f"{where}: {name}: missing required field")
        return default
    try:
        return check(obj[name])
    except _Invalid as e:
        raise MessageError(f"{where}: {e.under(name).path}: {e.text}") from None


@dataclass(frozen=True)
class Request:
    """A command-socket request; for PROXY, `data` is an `Order`."""

    id: str
    type: str
    data: Any = None
    worker_id: int | None = None
    version: int = 0

    @classmethod
    def from_json(cls, obj: Any) -> "Request":
        if type(obj) is not dict:
            raise MessageError(f"request: expected an object, got {_show(obj)}")
        request_id = obj.get("id") if type(obj.get("id")) is str else None
        try:
            return cls._from_json(obj)
        except MessageError as e:
            e.id = request_id
            raise

    @classmethod
    def _from_json(cls, obj: dict) -> "Request":
        for key in obj:
            if key not in _REQUEST_FIELDS:
                raise MessageError(f"request: {key}: unknown field")
        request_id = _field("request", obj, "id", _str)
        version = _field("request", obj, "version", _version, 0)
        worker_id = _field("request", obj, "worker_id", _optional(_int_range(0, None)), None)
        kind = _field("request", obj, "type", _str)
        if kind == "PROXY":
            if obj.get("data") is None:
                raise MessageError("request: data: expected an order, got null")
            data = Order.from_json(obj["data"])
        elif kind in _REQUEST_DATA:
            data = _field("request", {"data": obj.get("data")}, "data", _REQUEST_DATA[kind])
        else:
            raise MessageError(f"request: type: unknown request type {_show(kind)}")
        return cls(request_id, kind, data, worker_id, version)

    def to_json(self) -> dict:
        obj: dict[str, Any] = {"id": self.id, "version": self.version, "type": self.type}
        if self.data is not None:
            obj["data"] = self.data.to_json() if isinstance(self.data, Order) else self.data
        if self.worker_id is not None:
            obj["worker_id"] = self.worker_id
        return obj


def answer(request_id: str | int | float, status: str, message: str = "", data: Any = None) -> dict:
    """An answer on the command socket: OK, PROCESSING (more to come) or ERROR."""
    return {"id": request_id, "version": 0, "status": status, "message": message, "data": data}


def answer_id(message: Any) -> str | int | float:
    """The id an ERROR answer to `message` (a request, maybe malformed) repeats: the request's
    own when it is a string or a finite number, which a client can match; else "" (JSON has
    no infinity to repeat, and `{"id": 1e999}` decodes to one)."""
    request_id = message.get("id") if type(message) is dict else None
    if type(request_id) is str or type(request_id) is int:
        return request_id
    if type(request_id) is float and math.isfinite(request_id):
        return request_id
    return ""


# --- framing ----------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(obj: dict) -> bytes:
    """Compact UTF-8 JSON + NUL (JSON escapes control characters, so no NUL inside)."""
    text = _dumps(obj)
    try:
        return text.encode("utf-8") + b"\0"
    except UnicodeEncodeError:  # a lone surrogate from a "\udXXX" escape: keep it escaped
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\0"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_WHITESPACE = b" \t\r\n"


def _decode(raw: bytes) -> dict | MessageError | None:
    """One framed message -> its object, a MessageError, or None when blank."""
    raw = raw.strip(_WHITESPACE)
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return MessageError(f"message is not valid UTF-8 (byte {e.start})")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        return MessageError(f"message is not valid JSON: {e}")
    if type(obj) is not dict:
        return MessageError(f"expected a JSON object, got {_show(obj)}")
    if _SURROGATE_ESCAPE.search(text) and not _encodable(obj):
        return MessageError(_LONE_SURROGATE)
    return obj


# JSON may escape a lone UTF-16 surrogate ("\ud800"), which Python decodes into a str that no
# UTF-8 writer accepts: refused at the gate, as Sozu's serde_json does, so that it can never
# fail later in a worker (an answer text, a log line). Only messages with such an escape pay.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = "message is not valid Unicode: it escapes a lone UTF-16 surrogate (\\udXXX)"


def _encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Decoder:
    """Splits a byte stream into NUL-terminated JSON objects (sans-IO)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[dict | MessageError]:
        out: list[dict | MessageError] = []
        if b"\0" not in data:
            self._pending += data
            self._check_pending(out)
            return out
        first, *middle, rest = data.split(b"\0")
        self._pending += first
        frames = [bytes(self._pending), *middle]
        self._pending.clear()
        for frame in frames:
            if len(frame) > self.max_size:
                raise FrameTooLarge(f"message over the size limit of {self.max_size} bytes",
                                    out)
            message = _decode(frame)
            if message is not None:
                out.append(message)
        self._pending += rest
        self._check_pending(out)
        return out

    def _check_pending(self, out: list) -> None:
        if len(self._pending) > self.max_size:
            self._pending.clear()
            raise FrameTooLarge(f"message over the size limit of {self.max_size} bytes", out)


# --- saved state ------------------------------------------------------------------------------


def dump_orders(orders: Iterable[Order]) -> bytes:
    """Sozu's saved-state format: one PROXY request per order, `JSON\\n\\0` each."""
    return b"".join(encode(Request(f"SAVE-{i}", "PROXY", order).to_json())[:-1] + b"\n\0"
                    for i, order in enumerate(orders))


_SEPARATORS = re.compile(r"[ \t\r\n\x00]*")
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def load_orders(data: bytes) -> list[Order]:
    """Parse a saved state: PROXY requests separated by `\\n\\0`, `\\0` or blanks; only state
    orders. MessageError names the message index (from 0)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MessageError(f"saved state: not valid UTF-8 (byte {e.start})") from None
    orders: list[Order] = []
    pos = _SEPARATORS.match(text).end()
    while pos < len(text):
        where = f"saved state: message {len(orders)}"
        start = pos
        try:
            obj, pos = _JSON_DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MessageError(f"{where}: not valid JSON: {e}") from None
        except (ValueError, RecursionError) as e:
            raise MessageError(f"{where}: not valid JSON: {e}") from None
        if _SURROGATE_ESCAPE.search(text, start, pos) and not _encodable(obj):
            raise MessageError(f"{where}: {_LONE_SURROGATE}")
        try:
            request = Request.from_json(obj)
        except MessageError as e:
            raise MessageError(f"{where}: {e}") from None
        if request.type != "PROXY":
            raise MessageError(f"{where}: expected a PROXY request, got {request.type}")
        if request.data.type not in STATE_ORDERS:
            raise MessageError(f"{where}: {request.data.type} is not a state order")
        orders.append(request.data)
        pos = _SEPARATORS.match(text, pos).end()
    return orders
