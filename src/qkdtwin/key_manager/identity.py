"""Who is calling: the verified client certificate that the TLS server put in the WSGI
environ (``SSL_CLIENT_CERT``, PEM). CN = SAE ID (or node name), O = user, OU = kind."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Identity:
    cn: str
    o: str | None
    ou: str | None
    fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return {"cn": self.cn, "o": self.o, "ou": self.ou, "fingerprint": self.fingerprint}


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    vals = name.get_attributes_for_oid(oid)
    return str(vals[0].value) if vals else None


@functools.lru_cache(maxsize=4096)
def parse_pem(pem: str) -> Identity | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    cn = _attr(cert.subject, NameOID.COMMON_NAME)
    if not cn:
        return None
    return Identity(cn=cn, o=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
                    ou=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
                    fingerprint=cert.fingerprint(hashes.SHA256()).hex())


def from_environ(environ: dict[str, Any]) -> Identity | None:
    """The caller's identity, or None without a verified client certificate."""
    if environ.get("SSL_CLIENT_VERIFY") not in ("SUCCESS", None):
        return None
    pem = environ.get("SSL_CLIENT_CERT")
    if not pem:
        return None
    return parse_pem(pem)
