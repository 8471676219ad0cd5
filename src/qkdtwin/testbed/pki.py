"""A throw-away certificate authority for tests that run services on loopback.

Deployed labs get their PKI from the Ansible role ``pki``; tests of a single service need
the same shape of certificates without a lab: CN is the identity, OU the kind
(``node``, ``sae``, ``operator``), O the owning user for applications.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Identity:
    cert: str
    key: str


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qkdtwin test CA")])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = str(self.dir / "ca.crt")
        Path(self.ca).write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(cls, ca_cert: Path | str, ca_key: Path | str, directory: Path) -> TestCA:
        """An existing CA (e.g. a deployed lab's ``pki/ca.{crt,key}``) that issues into
        ``directory``: certificates the lab trusts for identities it does not know."""
        self = cls.__new__(cls)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cert = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        key = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key}: not an EC private key")
        self._key = key
        self.ca = str(ca_cert)
        return self

    def issue(self, cn: str, ou: str = "node", o: str | None = None,
              sans: tuple[str, ...] = ("localhost", "127.0.0.1"), ca: TestCA | None = None
              ) -> Identity:
        """Issue a certificate usable as TLS server and client; ``ca`` signs instead."""
        signer = ca or self
        key = ec.generate_private_key(ec.SECP256R1())
        # O, OU, CN: the order of role pki (community.crypto), so that a broker with
        # use_subject_as_username sees the same "CN=<cn>,OU=<ou>[,O=<o>]" as in a lab.
        attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                 x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if o:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
        alt: list[x509.GeneralName] = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name(attrs))
            .issuer_name(signer._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(signer._key, hashes.SHA256())
        )
        stem = self.dir / f"{ou}-{cn}"
        Path(f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return Identity(cert=f"{stem}.crt", key=f"{stem}.key")
