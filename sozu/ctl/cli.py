"""sozuctl: the command-line client of the sozu reverse proxy.

Usage:
  sozuctl [options] shutdown [--hard] [--worker=ID]
  sozuctl [options] upgrade [--worker=ID]
  sozuctl [options] status
  sozuctl [options] metrics
  sozuctl [options] logging --level=FILTER
  sozuctl [options] state save --file=FILE
  sozuctl [options] state load --file=FILE
  sozuctl [options] state dump
  sozuctl [options] application add --id=APP [--sticky-session] [--https-redirect]
            [--send-proxy [--send-proxy-version=N] | --expect-proxy] [--load-balancing-policy=POLICY]
            [--answer-400=FILE] [--answer-404=FILE] [--answer-408=FILE] [--answer-413=FILE]
            [--answer-502=FILE] [--answer-503=FILE] [--answer-504=FILE]
  sozuctl [options] application remove --id=APP
  sozuctl [options] backend add --id=APP --backend-id=B --address=IP:PORT [--weight=N]
            [--sticky-id=S] [--backup]
  sozuctl [options] backend remove --id=APP --backend-id=B --address=IP:PORT
  sozuctl [options] backend list [--id=APP]
  sozuctl [options] health-check set --id=APP [--protocol=PROTOCOL] [--check-method=METHOD]
            [--path=PATH] [--host=HOST] [--expected-statuses=LIST] [--expected-body=TEXT]
            [--interval=S] [--check-timeout=S] [--rise=N] [--fall=N]
  sozuctl [options] health-check remove --id=APP
  sozuctl [options] frontend (http | https) (add | remove) --id=APP
            (--address=IP:PORT) (--hostname=HOST)
            [--path=PREFIX | --path-equals=PATH | --path-regex=REGEX] [--method=METHOD...]
            [--redirect=STATUS] [--redirect-scheme=SCHEME] [--redirect-host=HOST]
            [--redirect-port=PORT] [--redirect-path=PATH] [--redirect-query=QUERY]
            [--rewrite-host=HOST] [--strip-prefix=PREFIX]
            [--rewrite-path-regex=REGEX --rewrite-path-replacement=REPLACEMENT]
            [--request-header=EDIT...] [--response-header=EDIT...]
  sozuctl [options] frontend list [--id=APP]
  sozuctl [options] frontend tcp (add | remove) --id=APP --address=IP:PORT
  sozuctl [options] certificate add --address=IP:PORT --certificate=FILE --key=FILE
            [--certificate-chain=FILE]
  sozuctl [options] certificate remove --address=IP:PORT
            (--certificate=FILE | --fingerprint=HEX)
  sozuctl [options] certificate replace --address=IP:PORT
            (--new-certificate=FILE) (--new-key=FILE) [--new-certificate-chain=FILE]
            (--old-certificate=FILE | --old-fingerprint=HEX)
  sozuctl [options] listener http add --address=IP:PORT [--public-address=IP:PORT]
            [--answer-400=FILE] [--answer-404=FILE] [--answer-408=FILE] [--answer-413=FILE]
            [--answer-502=FILE] [--answer-503=FILE] [--answer-504=FILE]
            [--expect-proxy] [--sticky-name=NAME]
            [--front-timeout=S] [--back-timeout=S] [--connect-timeout=S]
            [--request-timeout=S] [--h2c-prior-knowledge] [--http2-max-concurrent-streams=N]
  sozuctl [options] listener https add --address=IP:PORT [--public-address=IP:PORT]
            [--answer-400=FILE] [--answer-404=FILE] [--answer-408=FILE] [--answer-413=FILE]
            [--answer-502=FILE] [--answer-503=FILE] [--answer-504=FILE]
            [--expect-proxy] [--sticky-name=NAME]
            [--front-timeout=S] [--back-timeout=S] [--connect-timeout=S]
            [--request-timeout=S] [--tls-versions=LIST] [--cipher-list=CIPHERS]
            [--alpn=LIST] [--http2-max-concurrent-streams=N]
  sozuctl [options] listener tcp add --address=IP:PORT [--public-address=IP:PORT]
            [--expect-proxy] [--front-timeout=S] [--back-timeout=S] [--connect-timeout=S]
  sozuctl [options] listener (http | https | tcp)
            (remove | activate | deactivate) --address=IP:PORT
  sozuctl [options] query applications [--id=APP | --domain=HOST]
  sozuctl [options] config check
  sozuctl [options] etcd (push | diff)
  sozuctl (-h | --help | --version)

Options:
  -c FILE, --config=FILE    The proxy's configuration file, read only to find its
                            command socket (default: $SOZU_CONFIG).
  --json                    Print the answer as one JSON document.
  --timeout=MS              How long to wait for the answer, in ms (default: 5000; for
                            upgrade 60000, as a new master may take up to 30 s to serve).
  -h, --help                Show this help.
  --version                 Show the version.
  -i APP, --id=APP          Application id.
  -a IP:PORT, --address=IP:PORT
                            Address of a listener or a backend.
  -f FILE, --file=FILE      Saved state file.
  --worker=ID               One worker (by number) instead of the master and all workers.
  --hard                    Close every connection now instead of draining.
  --level=FILTER            Log filter, e.g. "info,sozu.http=debug".
  --load-balancing-policy=POLICY
                            roundrobin, random, leastconnections or poweroftwo.
  --weight=N                Backend weight, 0..1000 (default 100).
  --path=PREFIX             Path prefix of an HTTP(S) route (default: every path); for a
                            health check, the path it requests (default: /).
  --path-equals=PATH        The route serves this path only (query excluded).
  --path-regex=REGEX        The route serves the paths this Python regex finds a match in.
  --method=METHOD           Serve only these methods (repeat the option for several).
  --redirect=STATUS         Answer 301, 302, 307 or 308 with a Location made of the request's
                            URL and the --redirect-* parts that replace its own.
  --rewrite-host=HOST       Host header sent to the backend (optionally HOST:PORT).
  --strip-prefix=PREFIX     Remove this prefix from the path sent to the backend.
  --request-header=EDIT     Header edit toward the backend: "set:NAME:VALUE",
                            "add:NAME:VALUE" or "remove:NAME" (repeat for several).
  --response-header=EDIT    The same, toward the client.
  --protocol=PROTOCOL       Health check: http (a request, the default) or tcp (a connect).
  --check-method=METHOD     Health check: the request's method (default: GET).
  --expected-statuses=LIST  Health check: comma-separated statuses (default: any 2xx, 3xx).
  --expected-body=TEXT      Health check: a text the answer's body must contain.
  --interval=S              Health check: seconds between two checks (default 2).
  --check-timeout=S         Health check: seconds a check may take (default 1).
  --rise=N                  Health check: good checks in a row that bring a backend up (2).
  --fall=N                  Health check: failed checks in a row that take it down (3).
  --domain=HOST             Host name, optionally followed by a path ("example.com/api").
  --certificate-chain=FILE  PEM file with one or more intermediate certificates.
  --fingerprint=HEX         SHA-256 of the certificate (DER), lower-case hex.
  --tls-versions=LIST       Comma-separated, among TLSv1.2 and TLSv1.3.
  --alpn=LIST               Comma-separated, among h2 and http/1.1, preferred first.
  --http2-max-concurrent-streams=N  Streams an HTTP/2 client may have open at once (100).
  --h2c-prior-knowledge     Serve HTTP/2 without TLS to a client that opens with its preface.

Exit status: 0 on OK, 1 on an ERROR answer or bad command line, 2 when the proxy cannot be
reached or does not answer in time.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable

import docopt

import sozu.config
import sozu.state
from sozu import __version__
from sozu.ctl import render
from sozu.ctl.client import Client, ProxyUnreachable, new_request_id
from sozu.http.answers import CUSTOM_STATUSES
from sozu.messages import MessageError, Request
from sozu.vocabulary import DEFAULT_POLICY, POLICY_BY_LOWER_NAME

PROG = "sozuctl"
EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2

DEFAULT_TIMEOUT_MS = 5000
UPGRADE_TIMEOUT_MS = 60000  # an upgrade answers once the new master serves (30 s at most)
PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*(.*?)-----END CERTIFICATE-----", re.DOTALL)


class CliError(Exception):
    """A mistake on the client side (arguments, files): one line, exit 1."""


@dataclasses.dataclass(frozen=True)
class Ask:
    """A request without its id."""
    type: str
    data: Any = None
    worker_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Command:
    """What a command line becomes: the request to send, or a local action."""
    request: Ask | None = None
    renderer: Callable[[Any], str] | None = None
    local: Callable[[dict], int] | None = None


# --- entry point -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except CliError as e:
        _error(str(e))
        return EXIT_ERROR
    except ProxyUnreachable as e:
        _error(str(e))
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_ERROR
    except BrokenPipeError:  # `sozuctl metrics | head`: no complaint at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as e:  # sozuctl's edge: one line, never a traceback
        _error(f"internal error: {type(e).__name__}: {e}")
        return EXIT_ERROR


def _main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return EXIT_OK
    if argv == ["--version"]:
        print(f"{PROG} {__version__}")
        return EXIT_OK
    try:
        args = docopt.docopt(__doc__, argv=argv, help=False)
    except docopt.DocoptExit:
        _error("invalid command line; usage:\n" + _usage_for(argv))
        return EXIT_ERROR

    as_json = args["--json"]
    if args["--timeout"] is None:
        timeout_ms = UPGRADE_TIMEOUT_MS if args["upgrade"] else DEFAULT_TIMEOUT_MS
    else:
        timeout_ms = _int(args, "--timeout", minimum=1)
    config_path = args["--config"] or os.environ.get("SOZU_CONFIG")
    if not config_path:
        raise CliError("no configuration file: pass -c FILE or set SOZU_CONFIG")

    command = build(args)
    if command.local is not None:
        return command.local({"config": config_path, "json": as_json})

    request = _validated(command.request)
    socket_path = command_socket(config_path)

    def on_processing(answer: dict) -> None:
        if not as_json and answer.get("message"):
            print(f"PROCESSING: {answer['message']}", file=sys.stderr)

    answer = Client(socket_path, timeout_ms).send(request, on_processing)
    return _print_answer(answer, command.renderer, as_json)


def _print_answer(answer: dict, renderer: Callable[[Any], str] | None, as_json: bool) -> int:
    ok = answer.get("status") == "OK"
    if as_json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK if ok else EXIT_ERROR
    # An ERROR may still carry data (metrics of the workers that did answer): show it.
    if renderer is not None and (ok or answer.get("data") is not None):
        print(renderer(answer.get("data")))
    elif ok:
        message = answer.get("message")
        print(f"OK: {message}" if message else "OK")
    if not ok:
        print(f"ERROR: {answer.get('message') or 'no message'}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_ERROR


def _validated(ask: Ask) -> Request:
    """Requests (orders included) are checked and normalised here, so that a typo never
    reaches the proxy."""
    obj = {"id": new_request_id(), "version": 0, "type": ask.type, "data": ask.data}
    if ask.worker_id is not None:
        obj["worker_id"] = ask.worker_id
    try:
        return Request.from_json(obj)
    except MessageError as e:
        raise CliError(str(e)) from None


def command_socket(config_path: str) -> str:
    try:
        return sozu.config.command_socket(config_path)
    except sozu.config.ConfigError as e:
        raise CliError(str(e)) from None


# --- command line -> request -----------------------------------------------------------------

def build(args: dict) -> Command:
    for words, builder in BUILDERS:
        if all(args.get(word) for word in words):
            return builder(args)
    raise CliError("unknown command")  # docopt only lets through the commands above


def _proxy(order_type: str, data: Any = None, worker_id: int | None = None,
           renderer: Callable[[Any], str] | None = None) -> Command:
    return Command(Ask("PROXY", {"type": order_type, "data": data}, worker_id), renderer)


def _shutdown(a: dict) -> Command:
    return _proxy("HARD_STOP" if a["--hard"] else "SOFT_STOP",
                  worker_id=_int(a, "--worker", minimum=0))


def _upgrade(a: dict) -> Command:
    worker = _int(a, "--worker", minimum=0)
    if worker is None:
        return Command(Ask("UPGRADE_MASTER"))
    return Command(Ask("UPGRADE_WORKER", worker))


def _status(a: dict) -> Command:
    return Command(Ask("LIST_WORKERS"), render.status)


def _metrics(a: dict) -> Command:
    return _proxy("METRICS", renderer=render.metrics)


def _logging(a: dict) -> Command:
    return _proxy("LOGGING", a["--level"])


def _state_save(a: dict) -> Command:
    return Command(Ask("SAVE_STATE", {"path": os.path.abspath(a["--file"])}))


def _state_load(a: dict) -> Command:
    return Command(Ask("LOAD_STATE", {"path": os.path.abspath(a["--file"])}))


def _state_dump(a: dict) -> Command:
    return Command(Ask("DUMP_STATE"), render.state)


def _application_add(a: dict) -> Command:
    policy = (a["--load-balancing-policy"] or DEFAULT_POLICY).lower()
    if policy not in POLICY_BY_LOWER_NAME:
        raise CliError(f"--load-balancing-policy must be one of {', '.join(POLICY_BY_LOWER_NAME)}, "
                       f"not {a['--load-balancing-policy']!r}")
    proxy_protocol = "SendHeader" if a["--send-proxy"] else \
        "ExpectHeader" if a["--expect-proxy"] else None
    data = {"app_id": a["--id"], "sticky_session": a["--sticky-session"],
            "https_redirect": a["--https-redirect"], "proxy_protocol": proxy_protocol,
            "load_balancing_policy": POLICY_BY_LOWER_NAME[policy]}
    if a["--send-proxy-version"] is not None:
        data["send_proxy_version"] = _int(a, "--send-proxy-version", minimum=1)
    data.update(_answer_files(a))
    return _proxy("ADD_APPLICATION", data)


def _answer_files(a: dict) -> dict:
    """answer_NNN: the text of each --answer-NNN file given (custom answers, docs/routing.md)."""
    return {f"answer_{status}": _read_text(a[f"--answer-{status}"], "answer")
            for status in CUSTOM_STATUSES if a[f"--answer-{status}"] is not None}


def _application_remove(a: dict) -> Command:
    return _proxy("REMOVE_APPLICATION", a["--id"])


def _backend(a: dict) -> Command:
    data = {"app_id": a["--id"], "backend_id": a["--backend-id"], "address": a["--address"]}
    if a["remove"]:
        return _proxy("REMOVE_BACKEND", data)
    weight = _int(a, "--weight", minimum=0)
    data.update(sticky_id=a["--sticky-id"],
                load_balancing_parameters=None if weight is None else {"weight": weight},
                backup=a["--backup"])
    return _proxy("ADD_BACKEND", data)


def _backend_list(a: dict) -> Command:
    return _proxy("QUERY", {"type": "BACKENDS"},
                  renderer=lambda data: render.backends(data, a["--id"]))


def _health_check(a: dict) -> Command:
    if a["remove"]:
        return _proxy("SET_HEALTH_CHECK", {"app_id": a["--id"], "health_check": None})
    check: dict[str, Any] = {}
    for flag, name in (("--protocol", "protocol"), ("--check-method", "method"), ("--path", "path"),
                       ("--host", "host"), ("--expected-body", "expected_body")):
        if a[flag] is not None:
            check[name] = a[flag]
    for flag, name in (("--interval", "interval"), ("--check-timeout", "timeout")):
        if a[flag] is not None:
            check[name] = _number(a, flag)
    for flag, name in (("--rise", "rise"), ("--fall", "fall")):
        if a[flag] is not None:
            check[name] = _int(a, flag, minimum=1)
    if a["--expected-statuses"] is not None:
        check["expected_statuses"] = [_int({"--expected-statuses": v}, "--expected-statuses")
                                      for v in re.split(r"[,\s]+", a["--expected-statuses"]) if v]
    return _proxy("SET_HEALTH_CHECK", {"app_id": a["--id"], "health_check": check})


def _frontend(a: dict) -> Command:
    kind = _protocol(a)
    data: dict[str, Any] = {"app_id": a["--id"], "address": a["--address"]}
    if kind != "TCP":
        data.update(hostname=a["--hostname"], path_begin=a["--path"] or "")
        data.update(_frontend_rules(a))
    return _proxy(f"{'ADD' if a['add'] else 'REMOVE'}_{kind}_FRONT", data)


def _frontend_rules(a: dict) -> dict:
    """The routing rules of `frontend add` in ADD_HTTP_FRONT's fields (docs/routing.md);
    Order.from_json checks them as it checks every order."""
    rules: dict[str, Any] = {}
    for flag, kind in (("--path-equals", "EQUALS"), ("--path-regex", "REGEX")):
        if a[flag] is not None:
            rules["path"] = {"kind": kind, "value": a[flag]}
    if a["--method"]:
        rules["methods"] = list(a["--method"])
    redirect = {part: a[f"--redirect-{part}"] for part in ("scheme", "host", "path", "query")
                if a[f"--redirect-{part}"] is not None}
    if a["--redirect-port"] is not None:
        redirect["port"] = _int(a, "--redirect-port", minimum=1)
    if a["--redirect"] is not None or redirect:
        rules["redirect"] = {"status": _int(a, "--redirect", minimum=300) or 302, **redirect}
    rewrite = {"host": a["--rewrite-host"], "strip_prefix": a["--strip-prefix"],
               "path_regex": a["--rewrite-path-regex"],
               "path_replacement": a["--rewrite-path-replacement"]}
    if any(value is not None for value in rewrite.values()):
        rules["rewrite"] = rewrite
    for flag, field in (("--request-header", "request_headers"),
                        ("--response-header", "response_headers")):
        if a[flag]:
            rules[field] = [_header_edit(flag, edit) for edit in a[flag]]
    return rules


def _header_edit(flag: str, text: str) -> dict:
    action, _, rest = text.partition(":")
    name, colon, value = rest.partition(":")
    if not name or (action.lower() != "remove") != bool(colon):
        raise CliError(f'{flag}: expected "set:NAME:VALUE", "add:NAME:VALUE" or "remove:NAME", '
                       f"got {text!r}")
    return {"action": action, "name": name, "value": value.strip()}


def _frontend_list(a: dict) -> Command:
    query = {"type": "APP_ID", "data": a["--id"]} if a["--id"] is not None else None
    return _proxy("QUERY", {"type": "APPLICATIONS", "data": query}, renderer=render.frontends)


def _certificate_add(a: dict) -> Command:
    return _proxy("ADD_CERTIFICATE", {
        "front": a["--address"],
        "certificate": _certificate_and_key(a["--certificate"], a["--key"],
                                            a["--certificate-chain"]),
        "names": []})


def _certificate_remove(a: dict) -> Command:
    return _proxy("REMOVE_CERTIFICATE", {
        "front": a["--address"],
        "fingerprint": _fingerprint(a["--certificate"], a["--fingerprint"]),
        "names": []})


def _certificate_replace(a: dict) -> Command:
    return _proxy("REPLACE_CERTIFICATE", {
        "front": a["--address"],
        "new_certificate": _certificate_and_key(a["--new-certificate"], a["--new-key"],
                                                a["--new-certificate-chain"]),
        "old_fingerprint": _fingerprint(a["--old-certificate"], a["--old-fingerprint"]),
        "new_names": []})


def _listener_add(a: dict) -> Command:
    kind = _protocol(a)
    data: dict[str, Any] = {"front": a["--address"]}
    optional = {"public_address": a["--public-address"], "sticky_name": a["--sticky-name"],
                "cipher_list": a["--cipher-list"]}
    for flag in ("--front-timeout", "--back-timeout", "--connect-timeout", "--request-timeout",
                 "--http2-max-concurrent-streams"):
        optional[flag[2:].replace("-", "_")] = _int(a, flag)
    optional.update(_answer_files(a))
    for flag, key in (("--tls-versions", "versions"), ("--alpn", "alpn")):
        if a[flag] is not None:
            optional[key] = [v for v in re.split(r"[,\s]+", a[flag]) if v]
    data.update((k, v) for k, v in optional.items() if v is not None)
    if a["--expect-proxy"]:
        data["expect_proxy"] = True
    if a["--h2c-prior-knowledge"]:
        data["h2c_prior_knowledge"] = True
    return _proxy(f"ADD_{kind}_LISTENER", data)


def _listener_other(a: dict) -> Command:
    action = next(word for word in ("remove", "activate", "deactivate") if a[word])
    return _proxy(f"{action.upper()}_LISTENER", {"front": a["--address"], "proxy": _protocol(a)})


def _query_applications(a: dict) -> Command:
    query = None
    if a["--id"] is not None:
        query = {"type": "APP_ID", "data": a["--id"]}
    elif a["--domain"] is not None:
        hostname, slash, path = a["--domain"].partition("/")
        query = {"type": "DOMAIN",
                 "data": {"hostname": hostname, "path_begin": slash + path if slash else None}}
    return _proxy("QUERY", {"type": "APPLICATIONS", "data": query},
                  renderer=render.applications)


def _config_check(a: dict) -> Command:
    return Command(local=config_check)


# The first entry whose words are all on the command line wins: `listener add` comes before
# the other listener actions.
BUILDERS: list[tuple[tuple[str, ...], Callable[[dict], Command]]] = [
    (("shutdown",), _shutdown),
    (("upgrade",), _upgrade),
    (("status",), _status),
    (("metrics",), _metrics),
    (("logging",), _logging),
    (("state", "save"), _state_save),
    (("state", "load"), _state_load),
    (("state", "dump"), _state_dump),
    (("application", "add"), _application_add),
    (("application", "remove"), _application_remove),
    (("backend", "list"), _backend_list),
    (("backend",), _backend),
    (("frontend", "list"), _frontend_list),
    (("health-check",), _health_check),
    (("frontend",), _frontend),
    (("certificate", "add"), _certificate_add),
    (("certificate", "remove"), _certificate_remove),
    (("certificate", "replace"), _certificate_replace),
    (("listener", "add"), _listener_add),
    (("listener",), _listener_other),
    (("query", "applications"), _query_applications),
    (("config", "check"), _config_check),
    (("etcd", "push"), lambda a: Command(local=etcd_push)),
    (("etcd", "diff"), lambda a: Command(local=etcd_diff)),
]


# --- config check (local, no proxy) ----------------------------------------------------------

def config_check(options: dict) -> int:
    path = options["config"]
    try:
        config = sozu.config.load(path)
        config.to_orders()
    except (sozu.config.ConfigError, MessageError) as e:
        if options["json"]:
            print(json.dumps(_local_answer("ERROR", str(e), None), indent=2))
        else:
            print(f"ERROR: {e}", file=sys.stderr)
        return EXIT_ERROR
    message = f"{path}: {config.summary()}"
    if options["json"]:
        print(json.dumps(_local_answer("OK", message, _config_summary(config)), indent=2))
    else:
        print(f"OK: {message}")
    return EXIT_OK


# --- etcd (docs/etcd.md): the file's configuration into etcd; etcd against the proxy ----------

def _etcd_config(path: str):
    try:
        config = sozu.config.load(path)
    except sozu.config.ConfigError as e:
        raise CliError(str(e)) from None
    if config.provider.etcd is None:
        raise CliError(f"{path}: no [provider.etcd] section")
    return config


def etcd_push(options: dict) -> int:
    from sozu.provider import etcd
    config = _etcd_config(options["config"])
    try:
        message = etcd.push(config)
    except etcd.ETCD_ERRORS as error:
        raise CliError(f"etcd: {etcd.describe(error)}") from None
    print(json.dumps(_local_answer("OK", message, None), indent=2) if options["json"]
          else f"OK: {message}")
    return EXIT_OK


def etcd_diff(options: dict) -> int:
    from sozu.provider import etcd
    config = _etcd_config(options["config"])
    try:
        orders, refused = etcd.diff(config)
    except etcd.ETCD_ERRORS as error:
        raise CliError(f"etcd: {etcd.describe(error)}") from None
    except etcd.ProxyRefused as error:
        raise CliError(f"the proxy: {error}") from None
    if options["json"]:
        data = {"orders": [order.to_json() for order in orders], "refused": refused}
        print(json.dumps(_local_answer("OK", f"{len(orders)} orders", data), indent=2))
        return EXIT_OK
    for order in orders:
        print(json.dumps(order.to_json(), sort_keys=True))
    for key, reason in sorted(refused.items()):
        print(f"refused: {key}: {reason}")
    print(f"OK: {len(orders)} orders between the proxy and etcd, {len(refused)} keys refused")
    return EXIT_OK


def _config_summary(config: Any) -> dict:
    """Scalars as they are, collections as their size: enough to see what was understood."""
    summary = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):  # [metrics], [provider], sandbox
            summary[field.name] = dataclasses.asdict(value)
        else:
            summary[field.name] = len(value) if isinstance(value, (tuple, list, dict, frozenset)) else value
    if summary["provider"]["etcd"] and summary["provider"]["etcd"]["password"]:
        summary["provider"]["etcd"]["password"] = "(set)"
    summary["backends"] = sum(len(app.backends) for app in config.applications)
    return summary


def _local_answer(status: str, message: str, data: Any) -> dict:
    return {"id": None, "version": 0, "status": status, "message": message, "data": data}


# --- helpers ---------------------------------------------------------------------------------

def _protocol(a: dict) -> str:
    return next(word.upper() for word in ("http", "https", "tcp") if a[word])


def _int(a: dict, flag: str, minimum: int | None = None) -> int | None:
    text = a.get(flag)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"{flag} expects a whole number, not {text!r}") from None
    if minimum is not None and value < minimum:
        raise CliError(f"{flag} must be at least {minimum}, not {value}")
    return value


def _number(a: dict, flag: str) -> float:
    try:
        return float(a[flag])
    except ValueError:
        raise CliError(f"{flag} expects a number of seconds, not {a[flag]!r}") from None


def _read_text(path: str, what: str) -> str:
    # Bytes, then UTF-8: answer files are raw HTTP and must keep their CRLF.
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise CliError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CliError(f"the {what} file {path} is not UTF-8 text") from None


def _pem_certificates(path: str) -> list[str]:
    blocks = [m.group(0) + "\n" for m in PEM_CERTIFICATE.finditer(_read_text(path, "certificate"))]
    if not blocks:
        raise CliError(f"no PEM certificate in {path}")
    return blocks


def _certificate_and_key(cert_path: str, key_path: str, chain_path: str | None) -> dict:
    # A "fullchain" file works too: its first certificate is the leaf, the rest the chain.
    leaf, *chain = _pem_certificates(cert_path)
    if chain_path is not None:
        chain.extend(_pem_certificates(chain_path))
    key = _read_text(key_path, "key")
    if "PRIVATE KEY-----" not in key:
        raise CliError(f"no PEM private key in {key_path}")
    return {"certificate": leaf, "certificate_chain": chain, "key": key}


def _fingerprint(cert_path: str | None, fingerprint: str | None) -> str:
    if fingerprint is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", fingerprint):
            raise CliError(f"--fingerprint expects 64 hexadecimal digits (SHA-256), "
                           f"not {fingerprint!r}")
        return fingerprint.lower()
    return certificate_fingerprint(_pem_certificates(cert_path)[0])


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of the DER of the first certificate in `pem`, lower-case hex (as the state has it)."""
    try:
        return sozu.state.fingerprint(pem)
    except sozu.state.StateError as error:
        raise CliError(str(error)) from None


def _usage_for(argv: list[str]) -> str:
    """The usage lines of the command that was attempted (all of them if none matches)."""
    entries: list[str] = []
    for line in docopt.printable_usage(__doc__).splitlines()[1:]:
        if line.strip().startswith(PROG) or not entries:
            entries.append(line.strip())
        else:
            entries[-1] += " " + line.strip()
    words, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-c", "--config", "--timeout"):
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
    prefix = f"{PROG} [options] {words[0]}" if words else None
    matching = [e for e in entries if prefix and (e + " ").startswith(prefix + " ")]
    return "\n".join(f"  {e}" for e in (matching or entries))


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
