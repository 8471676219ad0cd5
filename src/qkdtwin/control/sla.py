"""Checking a session's requested QoS against a user's SLA (Admission Control).

QoS fields are ETSI GS QKD 004's: ``key_chunk_size`` (bytes), ``max_bps``, ``min_bps``,
``priority``, ``timeout`` (ms), ``ttl`` (s), ``jitter``. The SLA's ``max_key_size`` is in
bits, ``max_key_rate`` in bit/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Decision:
    ok: bool
    reason: str | None = None
    counter_qos: dict[str, Any] | None = None  # ETSI 004 status 7 counter-proposal
    qos: dict[str, Any] | None = None          # the effective QoS when ok


# The largest QoS number admission takes (finding L4: f"{max_bps:g}" of a huge integer raised
# OverflowError and the handler died without a reply; inf/NaN broke int()). The KMs refuse
# more already; this guards what any publisher on admission/in may send.
QOS_NUM_MAX = 2**53


def _num(qos: dict[str, Any], key: str, default: float) -> float:
    v = qos.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ValueError(f"qos.{key} must be a number >= 0")
    if (isinstance(v, float) and not math.isfinite(v)) or v > QOS_NUM_MAX:
        raise ValueError(f"qos.{key} must be at most {QOS_NUM_MAX}")
    return v


def check_qos(qos: Any, sla: dict[str, Any], peer_sae_id: str | None,
              live_sessions: int) -> Decision:
    """Admit or refuse a request; over-SLA QoS values get a counter-proposal."""
    if qos is None:
        qos = {}
    if not isinstance(qos, dict):
        return Decision(False, "rejected: qos must be an object")
    dests = sla.get("allowed_destinations") or []
    if "*" not in dests and peer_sae_id not in dests:
        return Decision(False, f"rejected: destination {peer_sae_id} not allowed by the SLA")
    if live_sessions >= int(sla["max_sessions"]):
        return Decision(False, f"rejected: user already has {live_sessions} sessions "
                               f"(SLA max_sessions {sla['max_sessions']})")
    try:
        max_rate = float(sla["max_key_rate"])
        max_size_bytes = int(sla["max_key_size"]) // 8
        priority = _num(qos, "priority", 0)
        max_bps = _num(qos, "max_bps", 0) or max_rate
        min_bps = _num(qos, "min_bps", 0)
        chunk = _num(qos, "key_chunk_size", 0) or max_size_bytes
        for k in ("timeout", "ttl", "jitter"):
            _num(qos, k, 0)
    except ValueError as exc:
        return Decision(False, f"rejected: {exc}")
    if min_bps > max_bps:
        return Decision(False, "rejected: qos.min_bps exceeds qos.max_bps")
    over = []
    if priority > sla["max_priority"]:
        over.append(f"priority {priority:g} > {sla['max_priority']}")
    if max_bps > max_rate:
        over.append(f"max_bps {max_bps:g} > {max_rate:g}")
    if chunk > max_size_bytes:
        over.append(f"key_chunk_size {chunk:g} bytes > {max_size_bytes}")
    effective = {**qos, "priority": int(priority), "max_bps": max_bps, "min_bps": min_bps,
                 "key_chunk_size": int(chunk)}
    if over:
        counter = {**effective, "priority": int(min(priority, sla["max_priority"])),
                   "max_bps": min(max_bps, max_rate), "min_bps": min(min_bps, max_rate),
                   "key_chunk_size": int(min(chunk, max_size_bytes))}
        return Decision(False, "rejected: qos exceeds SLA (" + ", ".join(over) + ")",
                        counter_qos=counter)
    return Decision(True, qos=effective)


def bucket_for(qos: dict[str, Any]) -> dict[str, int]:
    """Token bucket: rate = max_bps; size = one second of rate, at least one chunk."""
    rate = int(qos["max_bps"])
    return {"rate_bps": rate, "size_bits": max(rate, 8 * int(qos["key_chunk_size"]))}
