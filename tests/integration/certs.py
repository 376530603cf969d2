"""Test certificates made at test time (no private key is ever committed).

    ca = TestCA(tmp_path)                       # a root CA, written to ca.pem
    leaf = ca.issue(["a.test", "*.a.test"])     # a leaf signed by it, written to PEM files
    leaf.cert_path, leaf.key_path, leaf.fingerprint, leaf.cert_pem, leaf.key_pem

EC P-256 keys by default (instant to make); key_type="rsa" for RSA 2048.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_serials = itertools.count(1)
_USAGES = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_key(key_type: str = "ec", bits: int = 2048):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Leaf:
    names: list[str]
    cert: x509.Certificate
    key: object
    chain: list[x509.Certificate]
    cert_path: Path
    key_path: Path
    chain_path: Path | None

    @property
    def cert_pem(self) -> str:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)

    @property
    def chain_pems(self) -> list[str]:
        return [cert_pem(c) for c in self.chain]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def order_certificate(self) -> dict:
        """The `certificate` object of an ADD_CERTIFICATE order."""
        return {"certificate": self.cert_pem, "key": self.key_pem,
                "certificate_chain": self.chain_pems}


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "sozu test CA", key_type: str = "ec",
                 parent: "TestCA | None" = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = new_key(key_type)
        self.parent = parent
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name = parent.cert.subject if parent else subject
        signer = parent.key if parent else self.key
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer_name)
                   .public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                                crl_sign=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                  critical=False))
        self.cert = builder.sign(signer, hashes.SHA256())
        slug = name.replace(" ", "-")
        self.path = self.directory / f"{slug}.pem"
        self.path.write_text(cert_pem(self.cert))

    def intermediate(self, name: str = "sozu test intermediate") -> "TestCA":
        return TestCA(self.directory, name, parent=self)

    @property
    def chain(self) -> list[x509.Certificate]:
        """Certificates a server sends after a leaf this CA signed (not the root)."""
        return [self.cert] + self.parent.chain if self.parent else []

    def issue(self, names: list[str], *, key_type: str = "ec", key=None,
              not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, common_name: str | None = None,
              san: bool = True, ips: tuple[str, ...] = (),
              usages: tuple[str, ...] = ("server",)) -> Leaf:
        """A leaf for `names` (and `ips`), for its `usages`: "server" (to serve TLS), "client"
        (to authenticate to a server that asks for a client certificate), or both."""
        key = key or new_key(key_type)
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])])
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - datetime.timedelta(days=1))
                   .not_valid_after(not_after or now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([_USAGES[usage] for usage in usages]),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names] + [
                    x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        number = next(_serials)
        stem = f"leaf{number}-{names[0].replace('*', 'star')}"
        cert_path = self.directory / f"{stem}.crt.pem"
        key_path = self.directory / f"{stem}.key.pem"
        cert_path.write_text(cert_pem(cert))
        key_path.write_text(key_pem(key))
        chain = self.chain
        chain_path = None
        if chain:
            chain_path = self.directory / f"{stem}.chain.pem"
            chain_path.write_text("".join(cert_pem(c) for c in chain))
        return Leaf(list(names), cert, key, chain, cert_path, key_path, chain_path)
