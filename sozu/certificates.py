"""Certificates: parsed and checked before they reach any state (pure: cryptography only).

The master checks every certificate an order brings, and the configuration every certificate
file it names, with the same function, so a certificate refused at runtime is refused at
start too: PEM that does not parse, a key that does not match its certificate, an RSA key under
2048 bits, an expired certificate. The error names the field and the problem.
"""
from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sozu.state import StateError

MIN_RSA_BITS = 2048


class CertificateError(StateError):
    """A certificate, key or TLS setting that cannot be served; the text says why."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    fingerprint: str                 # SHA-256 of the leaf's DER, lower-case hex (as in the state)
    names: tuple[str, ...]           # DNS names of the subjectAltName, else the common name
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime


def check_certificate(certificate: str, key: str, chain=(), now: datetime.datetime | None = None
                      ) -> CertificateInfo:
    """Parse and check a certificate, its key and chain; CertificateError names the problem."""
    leaf = load_certificates(certificate, "certificate")[0]  # any others: more chain
    for i, pem in enumerate(chain):
        load_certificates(pem, f"certificate_chain[{i}]")
    private_key = load_key(key)
    subject = leaf.subject.rfc4514_string() or "an empty subject"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError(f"key: the private key does not match the certificate ({subject})")
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < MIN_RSA_BITS:
        raise CertificateError(f"key: an RSA key of {private_key.key_size} bits is too weak "
                               f"(at least {MIN_RSA_BITS})")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        raise CertificateError(f"certificate: expired on {not_after:%Y-%m-%d %H:%M:%S} UTC "
                               f"({subject})")
    try:
        names = certificate_names(leaf)
    except ValueError as error:  # a malformed extension: cryptography parses them lazily
        raise CertificateError(f"certificate: bad subjectAltName ({error})") from None
    fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CertificateInfo(fingerprint, names, subject,
                           leaf.not_valid_before_utc, not_after)


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                 if isinstance(a.value, str)]
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names if name))


def load_certificates(pem: str, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("utf-8", "replace"))
    except ValueError as error:
        detail = " ".join(str(error).split()) or "no PEM certificate"
        raise CertificateError(f"{what}: not a valid PEM certificate ({detail})") from None
    if not certificates:
        raise CertificateError(f"{what}: no PEM certificate")
    return certificates


def load_key(pem: str):
    try:
        return serialization.load_pem_private_key(pem.encode("utf-8", "replace"), password=None)
    except TypeError:
        raise CertificateError("key: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        detail = " ".join(str(error).split()) or "unreadable"
        raise CertificateError(f"key: not a valid PEM private key ({detail})") from None
