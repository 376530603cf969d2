"""`sozu provider etcd`: the proxy follows the configuration held in etcd (docs/etcd.md).

Theory of operation: a client of the command socket, exactly as sozuctl is; the proxy never
talks to etcd. Two states, each logged once when entered:

- SYNCING: read every key under the prefix (one range at revision R) and have the proxy load
  the state they describe (LOAD_STATE: the master applies only the difference with its running
  state, so that a provider started again sends nothing twice and loses nothing). After a lost
  connection, when the revision seen is still in etcd's history, the missed changes are
  replayed by the watch instead (resync by revision).
- WATCHING: a watch of the prefix from the revision seen + 1. Each batch of events is applied
  to the mirror of the keys, translated (sozu.provider.layout) and the difference between the
  state before and after is sent as orders, one PROXY request each. Every `heartbeat` seconds
  the keys' names and revisions are read: two checks in a row showing a change the watch did
  not deliver mean a silent watch, which is replaced.

Any failure (etcd unreachable, the proxy unreachable or refusing an order) goes back to
SYNCING after a backoff of 0.5 s doubling up to 10 s, trying the next endpoint; a refused
order makes the next sync a full one (LOAD_STATE of the whole state). Threads only: the
library's watch calls back from a thread of its own, which feeds a queue read here.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.watch import Watcher

from sozu import tls
from sozu.ctl.client import Client, ProxyUnreachable, new_request_id
from sozu.messages import Order, Request, load_orders
from sozu.provider.child import MASTER_PID_VARIABLE
from sozu.provider.layout import Translation, keys_of, normalize_prefix, state_file, translate
from sozu.state import ConfigState

log = logging.getLogger("sozu.provider")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
ETCD_ERRORS = (etcd_exceptions.Etcd3Exception, requests.exceptions.RequestException, ValueError)
# Of those, the ones where no etcd answered (down, no route, TLS refused): the others are
# etcd's own refusals (authentication failed, permission denied).
UNREACHABLE = (etcd_exceptions.ConnectionFailedError, etcd_exceptions.ConnectionTimeoutError,
               requests.exceptions.ConnectionError, requests.exceptions.Timeout)


class ProxyRefused(Exception):
    """The proxy answered ERROR; str() is its message."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _range_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the prefix ends with "/"


class _TrustingOnly(requests.adapters.HTTPAdapter):
    """HTTPS that trusts `ca_certificate` only. requests lets REQUESTS_CA_BUNDLE (set on many
    systems) override a session's own CA: the system's CAs would be asked to vouch for etcd's
    certificate, and refuse it."""

    def __init__(self, ca_certificate: str):
        super().__init__()
        self.ca_certificate = ca_certificate

    def send(self, request, **kwargs):
        return super().send(request, **{**kwargs, "verify": self.ca_certificate})


@dataclass
class Snapshot:
    revision: int
    kvs: dict[str, bytes]


class Etcd:
    """One etcd cluster through etcd3gw, endpoint after endpoint (the next one on failure)."""

    def __init__(self, settings, prefix: str):
        self.settings, self.prefix = settings, prefix
        self.addresses = dict(settings.addresses)  # etcd's -> this proxy's
        self.endpoint = 0
        self.client: etcd3gw.Etcd3Client | None = None

    def connect(self) -> None:
        url = urlsplit(self.settings.endpoints[self.endpoint % len(self.settings.endpoints)])
        self.endpoint += 1
        s = self.settings
        client = etcd3gw.Etcd3Client(host=url.hostname, port=url.port, protocol=url.scheme,
                                     ca_cert=s.ca_certificate, cert_cert=s.certificate,
                                     cert_key=s.key, timeout=s.timeout)
        if s.ca_certificate is not None:
            client.session.mount("https://", _TrustingOnly(s.ca_certificate))
        if s.user is not None:
            answer = client.post(client.get_url("/auth/authenticate"),
                                 json={"name": s.user, "password": s.password})
            client.session.headers["Authorization"] = answer["token"]
        self.client = client

    @property
    def where(self) -> str:
        return self.settings.endpoints[(self.endpoint - 1) % len(self.settings.endpoints)]

    def _range(self, **fields) -> dict:
        assert self.client is not None
        return self.client.post(self.client.get_url("/kv/range"), json={
            "key": _b64(self.prefix), "range_end": _b64(_range_end(self.prefix)), **fields})

    def read(self) -> Snapshot:
        answer = self._range()
        kvs = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
               for kv in answer.get("kvs", ())}
        return Snapshot(int(answer["header"]["revision"]), kvs)

    def revisions(self) -> dict[str, int]:
        """Every key under the prefix with the revision of its last change."""
        return {base64.b64decode(kv["key"]).decode(): int(kv["mod_revision"])
                for kv in self._range(keys_only=True).get("kvs", ())}

    def still_has(self, revision: int) -> bool:
        """The changes after `revision` are still in etcd's history (not compacted)."""
        try:
            self._range(revision=revision, count_only=True)
        except etcd_exceptions.Etcd3Exception as error:
            if "compacted" in (error.detail_text or ""):
                return False
            raise
        return True

    def watch(self, start_revision: int, events: queue.Queue) -> Watcher:
        return Watcher(self.client, self.prefix, events.put, start_revision=start_revision,
                       range_end=_range_end(self.prefix))


class Proxy:
    """The proxy's command socket, as sozuctl speaks it."""

    def __init__(self, socket_path: str, timeout_ms: int):
        self.client = Client(socket_path, timeout_ms)
        self.directory = tempfile.mkdtemp(prefix="sozu-provider-")  # 0700: keys go through it

    def _send(self, kind: str, data) -> str:
        answer = self.client.send(Request(new_request_id(), kind, data))
        if answer.get("status") != "OK":
            raise ProxyRefused(answer.get("message") or "ERROR")
        return answer.get("message", "")

    def load(self, state: ConfigState) -> str:
        path = os.path.join(self.directory, "state.json")
        with open(path, "wb") as file:
            file.write(state_file(state))
        try:
            return self._send("LOAD_STATE", {"path": path})
        finally:
            os.unlink(path)

    def current(self) -> ConfigState:
        """The running state, keys included (saved to a private file and read back)."""
        path = os.path.join(self.directory, "state.json")
        self._send("SAVE_STATE", {"path": path})
        try:
            with open(path, "rb") as file:
                return ConfigState.from_orders(load_orders(file.read()))
        finally:
            os.unlink(path)

    def apply(self, orders: list[Order]) -> None:
        for order in orders:
            self._send("PROXY", order)

    def report(self, refused: dict[str, str]) -> None:
        """Tell the master which keys are refused, for `sozuctl status` (docs/etcd.md)."""
        self._send("PROVIDER_REPORT", {"provider": "etcd", "pid": os.getpid(), "refused": [
            {"key": key, "reason": reason} for key, reason in sorted(refused.items())]})

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _check(order: Order) -> None:
    """The proxy's own TLS checks, so that a bad certificate is refused with its key."""
    try:
        tls.check_order(order)
    except tls.CertificateError as error:
        raise ValueError(str(error)) from None


class Provider:
    def __init__(self, etcd: Etcd, proxy: Proxy, heartbeat: float):
        self.etcd, self.proxy, self.heartbeat = etcd, proxy, heartbeat
        self.stopping = threading.Event()
        self.status = ""
        self.revision: int | None = None     # the last revision seen
        self.kvs: dict[str, bytes] = {}      # the keys as of that revision
        self.applied: ConfigState | None = None  # what the proxy holds from etcd, once synced
        self.refused: dict[str, str] = {}
        self.reported: dict[str, str] | None = None  # the refused keys the master was last told
        self.full_sync = True
        self.events: queue.Queue = queue.Queue()  # the watch's events; None: stop

    def stop(self) -> None:
        self.stopping.set()
        self.events.put(None)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                self.etcd.connect()
                self.sync()
                self.report(again=True)  # a master met anew (started again) knows nothing yet
                backoff = BACKOFF_FIRST
                self.watch()
            except ETCD_ERRORS as error:  # edge: etcd unreachable or refusing; try again
                down = isinstance(error, UNREACHABLE)
                self.enter("etcd-down" if down else "etcd-refused", logging.WARNING,
                           f"etcd at {self.etcd.where} {'unreachable' if down else 'refused the provider'} "
                           f"({describe(error)}): the proxy keeps its state; retrying")
            except (ProxyUnreachable, ProxyRefused) as error:  # edge: the proxy, later again
                self.full_sync = True
                self.enter("proxy-down", logging.WARNING,
                           f"the proxy did not take the change ({error}): loading the whole "
                           "state again")
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        self.proxy.close()

    def enter(self, status: str, level: int, message: str) -> None:
        """Log a state change once; every try after it only at debug level."""
        if status != self.status:
            log.log(level, "%s", message)
        else:
            log.debug("again: %s", message)
        self.status = status

    def sync(self) -> None:
        if not self.full_sync and self.revision is not None and self.etcd.still_has(self.revision):
            self.enter("watching", logging.INFO,
                       f"etcd at {self.etcd.where}: resuming after revision {self.revision}")
            return
        snapshot = self.etcd.read()
        self.revision, self.kvs = snapshot.revision, snapshot.kvs
        translation = self.translate()
        if not self.kvs:
            self.enter("empty", logging.WARNING,
                       f"no key under {self.etcd.prefix} at revision {self.revision}: the proxy "
                       "keeps its state (sozuctl etcd push writes one)")
            self.full_sync = False
            return
        self.load(translation)

    def load(self, translation: Translation) -> None:
        """Have the proxy load the whole state (it applies the difference with its own)."""
        answer = self.proxy.load(translation.state)
        self.applied, self.full_sync = translation.state, False
        self.status = "watching"  # rare: always logged
        log.info("etcd at %s: %d keys at revision %s loaded; the proxy: %s", self.etcd.where,
                 len(self.kvs), self.revision, answer)

    def watch(self) -> None:
        events = self.events = queue.Queue()
        watcher = self.etcd.watch(self.revision + 1, events)
        try:
            suspicious = 0
            next_check = time.monotonic() + self.heartbeat
            while not self.stopping.is_set():
                try:
                    batch = [events.get(timeout=max(0.0, next_check - time.monotonic()))]
                except queue.Empty:
                    next_check = time.monotonic() + self.heartbeat
                    # A master that replaced the one told (an upgrade) learns within a heartbeat.
                    self.report(again=True)
                    suspicious = suspicious + 1 if self.missed() else 0
                    if suspicious >= 2:
                        log.warning("the etcd watch is silent (etcd holds changes after revision "
                                    "%s it did not deliver): watching again", self.revision)
                        return
                    continue
                while True:
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
                if None in batch:  # stop()
                    return
                suspicious = 0
                self.apply_events(batch)
        finally:
            watcher.stop()

    def missed(self) -> bool:
        revisions = self.etcd.revisions()
        return revisions.keys() != self.kvs.keys() or any(
            revision > self.revision for revision in revisions.values())

    def apply_events(self, events: list[dict]) -> None:
        kvs = dict(self.kvs)
        revision = self.revision
        for event in events:
            kv = event["kv"]
            key = kv["key"].decode()
            if event.get("type") == "DELETE":
                kvs.pop(key, None)
            else:
                kvs[key] = kv.get("value", b"")
            revision = max(revision, int(kv.get("mod_revision", revision)))
        self.kvs, self.revision = kvs, revision
        translation = self.translate()
        if not kvs:
            self.enter("empty", logging.WARNING,
                       f"every key under {self.etcd.prefix} was removed: the proxy keeps its state")
        elif self.applied is None:
            self.load(translation)
        else:
            orders = self.applied.diff(translation.state)
            self.full_sync = True  # until every order is taken: some may be, not all
            self.proxy.apply(orders)
            self.full_sync = False
            self.applied = translation.state
            log.debug("revision %s: %d orders sent", revision, len(orders))
        self.report()

    def report(self, again: bool = False) -> None:
        """The refused keys to the master when they changed since it was told (or `again`)."""
        if again or self.refused != self.reported:
            self.reported = None  # until the master has taken it
            self.proxy.report(self.refused)
            self.reported = dict(self.refused)

    def translate(self) -> Translation:
        translation = translate(self.etcd.prefix, self.kvs, check=_check,
                                addresses=self.etcd.addresses)
        for key, reason in sorted(translation.refused.items()):
            if self.refused.get(key) != reason:
                log.error("etcd key %s refused: %s", key, reason)
        for key in sorted(self.refused.keys() - translation.refused.keys()):
            log.info("etcd key %s %s", key, "accepted" if key in self.kvs else "removed")
        self.refused = translation.refused
        return translation


def describe(error: Exception) -> str:
    """One line for an etcd failure: etcd's own message when it sent one."""
    text = getattr(error, "detail_text", None) or str(error) or type(error).__name__
    if "(Caused by " in text:  # requests' wrapping: the cause (refused, TLS alert) is the news
        text = text.rpartition("(Caused by ")[2].removesuffix(")")
    try:
        text = json.loads(text)["error"]
    except (ValueError, TypeError, KeyError):
        pass  # not etcd's JSON error: the text as it is
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:200] + "..."


def run(config) -> int:
    """`sozu provider etcd -c FILE`: follow etcd until SIGTERM or SIGINT."""
    settings = config.provider.etcd
    prefix = normalize_prefix(settings.prefix)
    provider = Provider(Etcd(settings, prefix), Proxy(config.command_socket,
                                                      config.ctl_command_timeout + 5000),
                        settings.heartbeat)

    def stop(signum, frame):
        provider.stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("following etcd %s under %s", ", ".join(settings.endpoints), prefix)
    thread = threading.Thread(target=provider.run, name="etcd-provider", daemon=True)
    thread.start()
    # Started by a master (sozu/provider/child.py): gone with it, rather than follow etcd for
    # nobody and next to the provider of the master that replaces it.
    master = int(os.environ.get(MASTER_PID_VARIABLE, "0"))
    while thread.is_alive():
        thread.join(0.5)
        if master and os.getppid() != master and not provider.stopping.is_set():
            log.warning("the master (pid %d) is gone: stopping", master)
            provider.stop()
    return 0


# --- sozuctl etcd push | diff ---------------------------------------------------------------

def push(config) -> str:
    """Write the configuration of the file under the prefix, in one transaction: the keys that
    change are put, those no longer wanted deleted."""
    settings = config.provider.etcd
    prefix = normalize_prefix(settings.prefix)
    etcd = Etcd(settings, prefix)
    wanted = keys_of(prefix, ConfigState.from_orders(config.to_orders()),
                     {here: there for there, here in etcd.addresses.items()})
    etcd.connect()
    current = etcd.read().kvs
    puts = [{"request_put": {"key": _b64(key), "value": base64.b64encode(value).decode()}}
            for key, value in sorted(wanted.items()) if current.get(key) != value]
    deletes = [{"request_delete_range": {"key": _b64(key)}}
               for key in sorted(current.keys() - wanted.keys())]
    if not puts and not deletes:
        return f"etcd at {etcd.where} already holds this configuration under {prefix}"
    answer = etcd.client.transaction({"compare": [], "success": puts + deletes})
    return (f"etcd at {etcd.where}: {len(puts)} keys put, {len(deletes)} deleted under {prefix} "
            f"(revision {answer['header']['revision']})")


def diff(config) -> tuple[list[Order], dict[str, str]]:
    """The orders that would turn the running proxy into what etcd describes, and the keys
    refused."""
    settings = config.provider.etcd
    prefix = normalize_prefix(settings.prefix)
    etcd = Etcd(settings, prefix)
    etcd.connect()
    translation = translate(prefix, etcd.read().kvs, check=_check, addresses=etcd.addresses)
    proxy = Proxy(config.command_socket, config.ctl_command_timeout + 5000)
    try:
        running = proxy.current()
    finally:
        proxy.close()
    return running.diff(translation.state), translation.refused
