"""KM-to-KM key relay, modelled on ETSI GS QKD 020 ``ext_keys``.

Every hop one-time-pad encrypts the end-to-end key values with fresh link key shared with
the next hop and authenticates the whole message with a one-time Poly1305 tag whose 32-byte
key is also fresh link key (Wegman–Carter). The receiver names the link keys by ID, consumes
exactly those, verifies, and either stores (destination) or re-encrypts for its next hop
(transit). Link keys are never reused: each is deleted when it is taken.

Message (``POST /kmapi/v1/ext_keys``)::

    {"session_id", "source_km", "from_km", "to_km", "link", "link_key_IDs": [...],
     "initiator_sae_id", "target_sae_ids": [...], "api": "014"|"004",
     "keys": [{"key_ID", "index", "size", "value": base64(ciphertext)}],
     "route": ["<link>", ...], "mac": base64}

``route`` (optional, for peers without it the receiver assumes ``[link]``) lists the links
the message crossed so far, source first: the source puts the link it sends on, every
transit appends its outgoing link before it re-seals (so the MAC covers it), and the
receiver checks that it ends with the link it arrived on. Destinations record it with each
key: a key whose route crossed a link under a QBER alarm is withdrawn (docs/api.md).
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

MAC_KEY_BYTES = 32
MAX_ROUTE = 32  # links; far beyond any lab's diameter


class RelayError(Exception):
    """A relay message that must be refused (HTTP status and message for the sender)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def xor(data: bytes, pad: bytes) -> bytes:
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad[:n], "big")).to_bytes(n, "big")


def canonical(msg: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in msg.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":")).encode()


def pad_bytes_needed(values: list[bytes]) -> int:
    return sum(len(v) for v in values) + MAC_KEY_BYTES


def seal(header: dict[str, Any], entries: list[dict[str, Any]], values: list[bytes],
         pad: bytes) -> dict[str, Any]:
    """Encrypt ``values`` (one per entry) with ``pad`` and add the one-time MAC."""
    need = pad_bytes_needed(values)
    if len(pad) < need:
        raise ValueError(f"pad of {len(pad)} bytes, need {need}")
    off = 0
    keys = []
    for entry, value in zip(entries, values, strict=True):
        ct = xor(value, pad[off:off + len(value)])
        off += len(value)
        keys.append({**entry, "value": base64.b64encode(ct).decode()})
    msg = {**header, "keys": keys}
    tag = Poly1305.generate_tag(pad[off:off + MAC_KEY_BYTES], canonical(msg))
    msg["mac"] = base64.b64encode(tag).decode()
    return msg


def open_sealed(msg: dict[str, Any], pad: bytes) -> list[bytes]:
    """Verify the MAC and decrypt; RelayError(400) if anything does not fit."""
    try:
        cts = [base64.b64decode(k["value"], validate=True) for k in msg["keys"]]
        tag = base64.b64decode(msg["mac"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise RelayError(400, f"malformed ext_keys message: {exc}") from None
    need = pad_bytes_needed(cts)
    if len(pad) < need:
        raise RelayError(400, "named link keys are too short for the message")
    off = sum(len(c) for c in cts)
    try:
        Poly1305.verify_tag(pad[off:off + MAC_KEY_BYTES], canonical(msg), tag)
    except InvalidSignature:
        raise RelayError(400, "message authentication failed") from None
    out, off = [], 0
    for ct in cts:
        out.append(xor(ct, pad[off:off + len(ct)]))
        off += len(ct)
    return out


def validate_message(msg: Any) -> dict[str, Any]:
    """Shape check of an incoming ext_keys message before any key is touched."""
    if not isinstance(msg, dict):
        raise RelayError(400, "ext_keys body must be a JSON object")
    for f in ("session_id", "source_km", "from_km", "to_km", "link", "initiator_sae_id", "mac",
              "api"):
        if not isinstance(msg.get(f), str):
            raise RelayError(400, f"ext_keys field {f} must be a string")
    ids = msg.get("link_key_IDs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise RelayError(400, "ext_keys field link_key_IDs must be a non-empty list of strings")
    if len(set(ids)) != len(ids):
        raise RelayError(400, "ext_keys names a link key twice")
    tsi = msg.get("target_sae_ids")
    if not isinstance(tsi, list) or len(tsi) != 1 or not isinstance(tsi[0], str):
        raise RelayError(400, "ext_keys field target_sae_ids must list exactly one SAE ID")
    keys = msg.get("keys")
    if not isinstance(keys, list) or not keys:
        raise RelayError(400, "ext_keys field keys must be a non-empty list")
    for k in keys:
        if not (isinstance(k, dict) and isinstance(k.get("key_ID"), str)
                and isinstance(k.get("index"), int) and isinstance(k.get("size"), int)
                and isinstance(k.get("value"), str)):
            raise RelayError(400, "each ext_keys key needs key_ID, index, size and value")
    route_of(msg)
    return msg


def route_of(msg: dict[str, Any]) -> list[str]:
    """The links a message crossed, ending with the one it arrived on (RelayError(400) if
    the field is malformed or does not end there)."""
    route = msg.get("route")
    if route is None:
        return [msg["link"]]
    if not isinstance(route, list) or not route or len(route) > MAX_ROUTE \
            or not all(isinstance(x, str) and x and "|" not in x for x in route):
        raise RelayError(400, f"ext_keys field route must be a list of 1-{MAX_ROUTE} link IDs")
    if len(set(route)) != len(route):
        raise RelayError(400, "ext_keys route crosses a link twice")
    if route[-1] != msg["link"]:
        raise RelayError(400, f"ext_keys route ends with {route[-1]}, but the message arrived"
                         f" on {msg['link']}")
    return list(route)


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
