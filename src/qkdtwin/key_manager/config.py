"""The Key Manager's configuration (YAML, rendered by Ansible), validated into dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdtwin.bus import BrokerConfig
from qkdtwin.errors import UserError


@dataclass(frozen=True)
class LinkConfig:
    """One QKD link this KM ends: its module (ETSI 014 server) and the peer KM."""

    link: str
    peer: str
    side: str              # "a": this KM pulls enc_keys from its module; "b": dec_keys
    peer_url: str
    module_url: str
    module_sae_id: str     # the SAE ID this KM names towards its module (the peer KM's)
    interface: str | None = None   # the node's interface on the link (SDN registration)
    module_token_file: str | None = None  # the module's API token (qkd_module/api.py)


@dataclass(frozen=True)
class Limits:
    max_keys_per_request: int = 128
    max_key_size: int = 8192
    min_key_size: int = 64
    max_body_bytes: int = 65536
    max_key_count: int = 100000   # reported as ETSI 014 max_key_count


@dataclass(frozen=True)
class PoolConfig:
    """Link-key pools: how much to pull from a module and when."""

    link_key_size: int = 256       # bits per key pulled from a module
    batch: int = 256               # keys per module request
    low_keys: int = 2048           # pull when fewer keys than this are available
    max_keys: int = 20000          # never hold more than this per link
    poll_s: float = 0.2


@dataclass(frozen=True)
class KmConfig:
    node: str
    host: str
    port: int
    ca: str
    cert: str
    key: str
    data_dir: Path
    broker: BrokerConfig | None
    links: tuple[LinkConfig, ...]
    key_size: int = 256
    limits: Limits = field(default_factory=Limits)
    pool: PoolConfig = field(default_factory=PoolConfig)
    sdn_url: str | None = None
    threads: int = 16
    prefetch_keys: int = 64        # ETSI 014: end-to-end keys kept ready per session
    prefetch_chunks: int = 8       # ETSI 004: chunks relayed ahead of the source application
    control_timeout_s: float = 5.0
    request_wait_s: float = 5.0    # longest a key request waits for key before 503 / status 2
    default_priority: int = 5
    undelivered_ttl_s: float = 3600.0

    def link_to(self, peer: str) -> LinkConfig | None:
        for lc in self.links:
            if lc.peer == peer:
                return lc
        return None


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise UserError(f"key_manager config: {where}{key} is required")
    return d[key]


def _int(d: dict[str, Any], key: str, default: int, where: str) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise UserError(f"key_manager config: {where}{key} must be a non-negative integer")
    return v


def parse_config(raw: dict[str, Any]) -> KmConfig:
    """Validate a loaded YAML mapping; a UserError names the first bad entry."""
    node = str(_req(raw, "node", ""))
    listen = raw.get("listen") or {}
    tls = raw.get("tls")
    if not isinstance(tls, dict):
        raise UserError("key_manager config: tls {ca, cert, key} is required")
    broker = BrokerConfig.from_dict(raw["broker"]) if raw.get("broker") else None
    links = []
    for i, m in enumerate(raw.get("modules") or []):
        w = f"modules[{i}]."
        if not isinstance(m, dict):
            raise UserError(f"key_manager config: {w[:-1]} must be a mapping")
        link = str(_req(m, "link", w))
        peer = str(_req(m, "peer", w))
        side = m.get("side") or ("a" if link.startswith(f"{node}-") else "b")
        if side not in ("a", "b"):
            raise UserError(f"key_manager config: {w}side must be a or b")
        sae = m.get("slave_sae_id") or (m.get("slave_sae_ids") or [None])[0] or peer
        links.append(LinkConfig(link=link, peer=peer, side=side,
                                peer_url=str(_req(m, "peer_url", w)).rstrip("/"),
                                module_url=str(_req(m, "module_url", w)).rstrip("/"),
                                module_sae_id=str(sae), interface=m.get("interface"),
                                module_token_file=m.get("module_token_file") or None))
    lim = raw.get("limits") or {}
    limits = Limits(**{k: _int(lim, k, getattr(Limits, k), "limits.") for k in
                       Limits.__dataclass_fields__})
    pl = raw.get("pool") or {}
    pool = PoolConfig(
        link_key_size=_int(pl, "link_key_size", PoolConfig.link_key_size, "pool."),
        batch=_int(pl, "batch", PoolConfig.batch, "pool."),
        low_keys=_int(pl, "low_keys", PoolConfig.low_keys, "pool."),
        max_keys=_int(pl, "max_keys", PoolConfig.max_keys, "pool."),
        poll_s=float(pl.get("poll_s", PoolConfig.poll_s)))
    if pool.link_key_size % 8 or pool.link_key_size == 0:
        raise UserError("key_manager config: pool.link_key_size must be a positive multiple of 8")
    key_size = _int(raw, "key_size", 256, "")
    if key_size % 8 or not limits.min_key_size <= key_size <= limits.max_key_size:
        raise UserError("key_manager config: key_size must be a multiple of 8 within the limits")
    sdn = raw.get("sdn") or {}
    return KmConfig(
        node=node, host=str(listen.get("host", "0.0.0.0")),
        port=_int(listen, "port", 8443, "listen."),
        ca=str(_req(tls, "ca", "tls.")), cert=str(_req(tls, "cert", "tls.")),
        key=str(_req(tls, "key", "tls.")), data_dir=Path(str(_req(raw, "data_dir", ""))),
        broker=broker, links=tuple(links), key_size=key_size, limits=limits, pool=pool,
        sdn_url=sdn.get("url"), threads=_int(raw, "threads", 16, ""),
        prefetch_keys=_int(raw, "prefetch_keys", 64, ""),
        prefetch_chunks=_int(raw, "prefetch_chunks", 8, ""),
        control_timeout_s=float(raw.get("control_timeout_s", 5.0)),
        request_wait_s=float(raw.get("request_wait_s", 5.0)),
        default_priority=_int(raw, "default_priority", 5, ""),
        undelivered_ttl_s=float(raw.get("undelivered_ttl_s", 3600.0)),
    )
