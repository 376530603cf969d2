"""sozu.tls without processes: certificate checks, SNI selection, TLSSocket over a socketpair.

The client side is Python's own ssl module (the system OpenSSL), the server side sozu.tls
(pyOpenSSL's): two TLS stacks, as in real life.
"""
import datetime
import socket
import ssl
import threading
import time

import pytest

from sozu import state as state_module
from sozu import tls
from sozu.messages import Order
from tests.integration.certs import TestCA, key_pem, new_key


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


# --- check_certificate --------------------------------------------------------------------------

def test_a_good_certificate_gives_its_fingerprint_names_and_dates(ca):
    leaf = ca.issue(["a.test", "*.a.test"])
    info = tls.check_certificate(leaf.cert_pem, leaf.key_pem, leaf.chain_pems)
    assert info.fingerprint == leaf.fingerprint == state_module.fingerprint(leaf.cert_pem)
    assert info.names == ("a.test", "*.a.test")
    assert info.not_after > _now()


def test_names_come_from_the_common_name_without_subject_alt_names(ca):
    leaf = ca.issue(["cn-only.test"], san=False)
    assert tls.check_certificate(leaf.cert_pem, leaf.key_pem).names == ("cn-only.test",)


@pytest.mark.parametrize("mutate,message", [
    (lambda c, k, ch: ("not a certificate", k, ch), "certificate: not a valid PEM certificate"),
    (lambda c, k, ch: (c.replace("MII", "MIX", 1), k, ch), "certificate: not a valid PEM certificate"),
    (lambda c, k, ch: (c, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", ch),
     "key: not a valid PEM private key"),
    (lambda c, k, ch: (c, key_pem(new_key()), ch), "key: the private key does not match the certificate"),
    (lambda c, k, ch: (c, k, ["garbage"]), r"certificate_chain\[0\]: not a valid PEM certificate"),
])
def test_bad_input_is_refused_with_a_clear_message(ca, mutate, message):
    leaf = ca.issue(["bad.test"])
    with pytest.raises(tls.CertificateError, match=message):
        tls.check_certificate(*mutate(leaf.cert_pem, leaf.key_pem, leaf.chain_pems))


def test_an_expired_certificate_is_refused_with_its_date(ca):
    leaf = ca.issue(["old.test"], not_before=_now() - datetime.timedelta(days=30),
                    not_after=_now() - datetime.timedelta(days=1))
    with pytest.raises(tls.CertificateError, match=r"certificate: expired on \d{4}-\d\d-\d\d .*CN=old.test"):
        tls.check_certificate(leaf.cert_pem, leaf.key_pem)


def test_encrypted_keys_and_weak_rsa_keys_are_refused(ca):
    from cryptography.hazmat.primitives import serialization
    leaf = ca.issue(["enc.test"])
    encrypted = leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")).decode()
    with pytest.raises(tls.CertificateError, match="key: encrypted private keys are not supported"):
        tls.check_certificate(leaf.cert_pem, encrypted)
    weak = ca.issue(["weak.test"], key=new_key("rsa", 1024))
    with pytest.raises(tls.CertificateError, match="RSA key of 1024 bits is too weak"):
        tls.check_certificate(weak.cert_pem, weak.key_pem)


def test_check_order_covers_add_replace_and_the_listener_cipher_list(ca):
    good, other = ca.issue(["o.test"]), ca.issue(["p.test"])
    bad = {"certificate": good.cert_pem, "key": other.key_pem, "certificate_chain": []}
    tls.check_order(Order.from_json({"type": "ADD_CERTIFICATE", "data": {
        "front": "127.0.0.1:8443", "certificate": good.order_certificate()}}))
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.check_order(Order.from_json({"type": "ADD_CERTIFICATE", "data": {
            "front": "127.0.0.1:8443", "certificate": bad}}))
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.check_order(Order.from_json({"type": "REPLACE_CERTIFICATE", "data": {
            "front": "127.0.0.1:8443", "new_certificate": bad, "old_fingerprint": "ab" * 32}}))
    with pytest.raises(tls.CertificateError, match="cipher_list: OpenSSL matches no cipher"):
        tls.check_order(Order.from_json({"type": "ADD_HTTPS_LISTENER", "data": {
            "front": "127.0.0.1:8443", "cipher_list": "NOTHING-REAL"}}))
    tls.check_order(Order.from_json({"type": "ADD_BACKEND", "data": {
        "app_id": "a", "backend_id": "b", "address": "127.0.0.1:1"}}))  # others pass through


# --- SNI selection ------------------------------------------------------------------------------

def _entry(leaf, names=()):
    return {"certificate": leaf.cert_pem, "certificate_chain": leaf.chain_pems, "key": leaf.key_pem,
            "names": list(names)}


def test_sni_picks_exact_then_wildcard_then_the_first_added(ca):
    first, exact, wild = ca.issue(["first.test"]), ca.issue(["www.x.test"]), ca.issue(["*.x.test"])
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    contexts.update({first.fingerprint: _entry(first), exact.fingerprint: _entry(exact),
                     wild.fingerprint: _entry(wild)})
    by_fp = {fp: served.context for fp, served in contexts.served.items()}
    assert contexts.select("www.x.test") is by_fp[exact.fingerprint]
    assert contexts.select("WWW.X.TEST.") is by_fp[exact.fingerprint]
    assert contexts.select("api.x.test") is by_fp[wild.fingerprint]
    assert contexts.select("a.b.x.test") is by_fp[first.fingerprint]  # one label only
    assert contexts.select("x.test") is by_fp[first.fingerprint]
    assert contexts.select(None) is by_fp[first.fingerprint]


def test_a_replacement_keeps_the_default_place_and_removal_moves_it(ca):
    a, b, a2 = ca.issue(["a.test"]), ca.issue(["b.test"]), ca.issue(["a.test"])
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    contexts.update({a.fingerprint: _entry(a), b.fingerprint: _entry(b)})
    contexts.update({b.fingerprint: _entry(b), a2.fingerprint: _entry(a2)})  # what REPLACE leaves
    assert contexts.order == [a2.fingerprint, b.fingerprint]
    assert contexts.select("unknown.test") is contexts.served[a2.fingerprint].context
    contexts.update({b.fingerprint: _entry(b)})
    assert contexts.select("a.test") is contexts.served[b.fingerprint].context
    contexts.update({})
    assert contexts.select("a.test") is None


def test_the_certificate_valid_longest_wins_a_shared_name_and_names_can_be_given(ca):
    old = ca.issue(["s.test"], not_after=_now() + datetime.timedelta(days=5))
    new = ca.issue(["s.test"], not_after=_now() + datetime.timedelta(days=50))
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    contexts.update({old.fingerprint: _entry(old), new.fingerprint: _entry(new, ["given.test"])})
    assert contexts.select("s.test") is contexts.served[old.fingerprint].context
    assert contexts.select("given.test") is contexts.served[new.fingerprint].context
    renewed = ca.issue(["s.test"], not_after=_now() + datetime.timedelta(days=90))
    contexts.update({old.fingerprint: _entry(old), new.fingerprint: _entry(new, ["given.test"]),
                     renewed.fingerprint: _entry(renewed)})
    assert contexts.select("s.test") is contexts.served[renewed.fingerprint].context


def test_contexts_are_built_once_not_per_state_change(ca):
    leaf = ca.issue(["once.test"])
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    contexts.update({leaf.fingerprint: _entry(leaf)})
    built = contexts.served[leaf.fingerprint].context
    contexts.update({leaf.fingerprint: _entry(leaf)})
    assert contexts.served[leaf.fingerprint].context is built


# --- TLSSocket over a socketpair ----------------------------------------------------------------

def _client_context(ca, **kwargs):
    context = ssl.create_default_context(cafile=str(ca.path))
    for name, value in kwargs.items():
        setattr(context, name, value)
    return context


def _handshake(contexts, client, server_name, deadline=2.0, data=b""):
    """Run a server handshake against `client(sock)` in a thread; (server TLSSocket, result)."""
    a, b = socket.socketpair()
    result = {}

    def run_client():
        try:
            result["value"] = client(b)
        except Exception as error:  # reported to the test
            result["error"] = error

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    server = tls.TLSSocket(contexts.connection(), a)
    try:
        server.handshake(time.monotonic() + deadline)
        if data:
            server.sendall(data)
        server.close()
    except (OSError, socket.timeout) as error:
        result["server_error"] = error
        a.close()
    thread.join(5)
    b.close()
    return server, result


@pytest.fixture(scope="module")
def listener(ca):
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    leaves = [ca.issue(["default.test"]), ca.issue(["sni.test"])]
    contexts.update({leaf.fingerprint: _entry(leaf) for leaf in leaves})
    return contexts


def test_handshake_sni_alpn_and_data_over_tls13(ca, listener):
    payload = bytes(range(256)) * 1024  # several records

    def client(sock):
        with _client_context(ca).wrap_socket(sock, server_hostname="sni.test") as s:
            s.settimeout(5)
            s.do_handshake()
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return s.version(), s.getpeercert()["subject"], got

    server, result = _handshake(listener, client, "sni.test", data=payload)
    assert "error" not in result, result
    version, subject, got = result["value"]
    assert version == "TLSv1.3"
    assert subject == ((("commonName", "sni.test"),),)
    assert got == payload  # and a clean close_notify ended it
    assert server.server_name == "sni.test"


@pytest.mark.parametrize("alpn, offered, chosen", [
    (None, ["http/1.1", "h2"], "h2"),            # the default: h2 first, whatever the client's order
    (None, ["http/1.1"], "http/1.1"),
    (["http/1.1"], ["h2", "http/1.1"], "http/1.1"),
    (["http/1.1", "h2"], ["h2", "http/1.1"], "http/1.1"),
    (["h2"], ["http/1.1"], None),                # no overlap: no ALPN, the connection goes on
])
def test_alpn_follows_the_listener_list(ca, alpn, offered, chosen):
    contexts = tls.ListenerContexts("127.0.0.1:8443", {"alpn": alpn} if alpn else {})
    leaf = ca.issue(["default.test"])
    contexts.update({leaf.fingerprint: _entry(leaf)})

    def client(sock):
        context = _client_context(ca)
        context.set_alpn_protocols(offered)
        with context.wrap_socket(sock, server_hostname="default.test") as s:
            return s.selected_alpn_protocol()

    server, result = _handshake(contexts, client, "default.test")
    assert result.get("value") == chosen, result
    assert server.alpn == (chosen.encode() if chosen else None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls10_and_tls11_are_refused(ca, listener, version):
    def client(sock):
        context = _client_context(ca, minimum_version=version, maximum_version=version)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with context.wrap_socket(sock, server_hostname="default.test") as s:
            return s.version()

    _, result = _handshake(listener, client, "default.test")
    assert "value" not in result
    assert "server_error" in result and "unsupported protocol" in str(result["server_error"])


def test_tls12_uses_a_forward_secret_aead_cipher(ca, listener):
    def client(sock):
        context = _client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        with context.wrap_socket(sock, server_hostname="default.test") as s:
            return s.version(), s.cipher()[0]

    _, result = _handshake(listener, client, "default.test")
    version, cipher = result["value"]
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA" in cipher)


def test_a_client_that_sends_nothing_is_cut_at_the_deadline(listener):
    a, b = socket.socketpair()
    server = tls.TLSSocket(listener.connection(), a)
    start = time.monotonic()
    with pytest.raises(socket.timeout):
        server.handshake(start + 0.3)
    # Not before the deadline; the upper bound only says it did not hang (a loaded machine
    # may take its time to run the test at all).
    assert time.monotonic() - start >= 0.29  # the poll timeout is in milliseconds
    assert time.monotonic() - start < 10
    a.close()
    b.close()


def test_a_trickling_client_is_cut_at_the_deadline_too(listener):
    a, b = socket.socketpair()
    server = tls.TLSSocket(listener.connection(), a)
    stop, trickled = threading.Event(), threading.Event()

    def trickle():
        hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 64
        for byte in hello:
            if stop.is_set():
                return
            try:
                b.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.02)
        trickled.set()

    threading.Thread(target=trickle, daemon=True).start()
    start = time.monotonic()
    with pytest.raises((socket.timeout, OSError)):
        server.handshake(start + 0.4)
    assert time.monotonic() - start >= 0.39
    assert not trickled.is_set()  # cut at the deadline, while the hello still trickled in (1.4 s)
    stop.set()
    a.close()
    b.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_are_resumed(ca, listener, version):
    sessions = []

    def client(sock):
        context = client.context
        with context.wrap_socket(sock, server_hostname="default.test",
                                 session=sessions[-1] if sessions else None) as s:
            s.settimeout(5)
            s.recv(10)  # TLS 1.3 sends its session ticket after the handshake
            sessions.append(s.session)
            return s.session_reused

    client.context = _client_context(ca, maximum_version=version)
    _handshake(listener, client, "default.test", data=b"x")
    _, result = _handshake(listener, client, "default.test", data=b"x")
    assert result.get("value") is True, result


def test_a_new_ticket_key_every_ticket_key_lifetime(ca, listener):
    sessions = []

    def client(sock):
        with client.context.wrap_socket(sock, server_hostname="sni.test",
                                        session=sessions[-1] if sessions else None) as s:
            s.settimeout(5)
            s.recv(10)  # TLS 1.3 sends its session ticket after the handshake
            sessions.append(s.session)
            return s.session_reused

    client.context = _client_context(ca)
    assert _handshake(listener, client, "sni.test", data=b"x")[1]["value"] is False
    assert _handshake(listener, client, "sni.test", data=b"x")[1]["value"] is True
    listener.session_context_since -= tls.TICKET_KEY_LIFETIME  # an hour later
    assert _handshake(listener, client, "sni.test", data=b"x")[1]["value"] is False
    assert _handshake(listener, client, "sni.test", data=b"x")[1]["value"] is True


def test_a_certificate_openssl_refuses_is_skipped_once_and_the_others_served(ca, caplog):
    good, bad = ca.issue(["good.test"]), ca.issue(["bad.test"])
    broken = dict(_entry(bad), key=key_pem(new_key()))  # a key that does not match
    contexts = tls.ListenerContexts("127.0.0.1:8443", {})
    contexts.update({bad.fingerprint: broken, good.fingerprint: _entry(good)})
    contexts.update({bad.fingerprint: broken, good.fingerprint: _entry(good)})
    assert list(contexts.served) == [good.fingerprint]
    assert contexts.select("bad.test") is contexts.served[good.fingerprint].context
    assert len([r for r in caplog.records if "cannot serve the certificate" in r.message]) == 1


def test_the_listener_cipher_list_and_versions_are_honoured(ca):
    leaf = ca.issue(["c.test"])
    contexts = tls.ListenerContexts("127.0.0.1:8443", {"cipher_list": "ECDHE-ECDSA-CHACHA20-POLY1305",
                                                      "versions": ["TLSv1.2"]})
    contexts.update({leaf.fingerprint: _entry(leaf)})

    def client(sock):
        with _client_context(ca).wrap_socket(sock, server_hostname="c.test") as s:
            return s.version(), s.cipher()[0]

    _, result = _handshake(contexts, client, "c.test")
    assert result.get("value") == ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"), result
