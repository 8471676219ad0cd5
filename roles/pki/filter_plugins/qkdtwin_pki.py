"""Filters of the pki role: which identities the lab needs and which must be (re)issued.

They run on the controller inside the templating engine, so checking two dozen existing
certificates costs no module run; only missing or out-of-date material goes through the
community.crypto modules.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from ansible.errors import AnsibleFilterError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    HAS_CRYPTOGRAPHY = True
except ImportError:  # reported when a filter is used
    HAS_CRYPTOGRAPHY = False

# Renew certificates that would expire within this window.
RENEW_BEFORE = datetime.timedelta(days=30)


def _need_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise AnsibleFilterError(
            "the pki filters need the 'cryptography' package on the controller"
        )


def _ip(value: str) -> str:
    return str(ipaddress.ip_interface(value).ip)


def node_identity(node: str, mgmt_ipv4: str, interfaces: list | None = None) -> dict:
    """The identity of a node: server and client certificate, CN = node name."""
    sans = [f"DNS:{node}", "DNS:localhost", f"IP:{_ip(mgmt_ipv4)}", "IP:127.0.0.1"]
    for iface in interfaces or []:
        if iface.get("ipv4"):
            sans.append(f"IP:{_ip(iface['ipv4'])}")
    return {
        "path": f"nodes/{node}",
        "cn": node,
        "ou": "node",
        "sans": list(dict.fromkeys(sans)),
        "eku": ["serverAuth", "clientAuth"],
    }


def client_identities(users: list | None) -> list[dict]:
    """One client identity per application (SAE) of every user, plus the operator host."""
    out: list[dict] = []
    for user in users or []:
        for app in user.get("applications") or []:
            sae = app["sae_id"]
            out.append({
                "path": f"sae/{sae}",
                "cn": sae,
                "o": user["name"],
                "ou": "sae",
                "sans": [f"DNS:{sae}"],
                "eku": ["clientAuth"],
            })
    out.append({"path": "host", "cn": "host", "ou": "operator", "sans": ["DNS:host"],
                "eku": ["clientAuth"]})
    return out


def share(items: list, hosts: list, host: str) -> list:
    """This host's round-robin share of items, so that work spreads over the play's hosts."""
    hosts = list(hosts)
    if host not in hosts:
        return []
    return list(items)[hosts.index(host) :: len(hosts)]


def _load_cert(path: str):
    try:
        with open(path, "rb") as fh:
            return x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError):
        return None


def _load_key(path: str):
    try:
        with open(path, "rb") as fh:
            return serialization.load_pem_private_key(fh.read(), password=None)
    except (OSError, ValueError, TypeError):
        return None


def _same_key(cert, key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _fresh(cert) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def _is_p256(key) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def ca_valid(pki_dir: str) -> bool:
    """True when ca.key and ca.crt exist, belong together and the CA is not about to expire."""
    _need_cryptography()
    cert = _load_cert(os.path.join(pki_dir, "ca.crt"))
    key = _load_key(os.path.join(pki_dir, "ca.key"))
    return bool(cert and key and _is_p256(key) and _same_key(cert, key) and _fresh(cert))


def _attr(name, oid) -> list[str]:
    return [a.value for a in name.get_attributes_for_oid(oid)]


def _sans(cert) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out = {f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)}
    out |= {f"IP:{v}" for v in ext.get_values_for_type(x509.IPAddress)}
    return out


def _up_to_date(ident: dict, pki_dir: str, ca) -> bool:
    base = os.path.join(pki_dir, ident["path"])
    cert, key = _load_cert(base + ".crt"), _load_key(base + ".key")
    if not (cert and key and _is_p256(key) and _same_key(cert, key) and _fresh(cert)):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - whatever fails (signature, key type), re-issue
        return False
    subject = cert.subject
    oid = x509.NameOID
    return (
        _attr(subject, oid.COMMON_NAME) == [ident["cn"]]
        and _attr(subject, oid.ORGANIZATIONAL_UNIT_NAME) == [ident["ou"]]
        and _attr(subject, oid.ORGANIZATION_NAME) == ([ident["o"]] if ident.get("o") else [])
        and _sans(cert) == set(ident["sans"])
    )


def stale(identities: list, pki_dir: str) -> list[dict]:
    """The identities whose key or certificate is missing, mismatched, expiring or not
    issued by the current lab CA."""
    _need_cryptography()
    ca = _load_cert(os.path.join(pki_dir, "ca.crt"))
    if ca is None:
        return list(identities)
    return [i for i in identities if not _up_to_date(i, pki_dir, ca)]


class FilterModule:
    def filters(self) -> dict:
        return {
            "qkdtwin_pki_node_identity": node_identity,
            "qkdtwin_pki_client_identities": client_identities,
            "qkdtwin_pki_ca_valid": ca_valid,
            "qkdtwin_pki_stale": stale,
            "qkdtwin_pki_share": share,
        }
