"""The module's configuration (YAML rendered by role qkd_module), validated."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkdtwin.bus import BrokerConfig
from qkdtwin.errors import UserError
from qkdtwin.qkd_module.peerlink import PeerTls
from qkdtwin.quantum import link
from qkdtwin.quantum.link import sifted_signal_per_pulse
from qkdtwin.quantum.params import LinkParams

DEFAULT_PEER_PORT = 7700


@dataclass(frozen=True)
class ModuleConfig:
    node: str                 # this node (its KM is this module's SAE)
    link: str                 # link id, e.g. km0-km1
    side: str                 # "a" = Alice (source, master of enc_keys), "b" = Bob
    peer: str                 # the other node (the peer KM is the other SAE)
    local_ipv4: str           # this end's p2p address
    peer_ipv4: str            # the other end's p2p address
    peer_port: int            # Bob listens here; Alice connects from local_ipv4
    host: str                 # ETSI 014, /control/eve (token), /healthz, /metrics (loopback)
    port: int
    data_dir: Path
    params: LinkParams
    broker: BrokerConfig | None
    telemetry_interval_s: float = 1.0
    frame_s: float = 0.05             # wall seconds of pulses per channel frame
    max_inflight_blocks: int = 3      # blocks post-processed concurrently (pipelining)
    max_queued_blocks: int = 4        # detected blocks waiting; beyond: backpressure on Alice
    key_size: int = 256
    max_key_per_request: int = 1024
    max_key_size: int = 8192
    min_key_size: int = 64
    max_stored_bits: int = 512 * 1024 * 1024
    rate_window_s: float = 10.0
    undelivered_ttl_s: float = 3600.0  # b end: assigned keys never fetched are dropped after
    tls: PeerTls | None = None         # the quantum connection's mutual TLS (peerlink.py)
    api_token_file: Path | None = None  # bearer token of the API (default: in data_dir)

    @property
    def token_path(self) -> Path:
        return self.api_token_file or self.data_dir / f"qkd-{self.link}.api-token"

    @property
    def is_alice(self) -> bool:
        return self.side == "a"

    @property
    def db_path(self) -> Path:
        return self.data_dir / f"qkd-{self.link}.sqlite"

    @property
    def sifted_signal_per_pulse(self) -> float:
        return sifted_signal_per_pulse(self.params)

    @property
    def block_pulses(self) -> int:
        return block_pulses(self.params)

    @property
    def pulses_per_wall_second(self) -> float:
        return self.params.source_rate_hz * self.params.time_scale


def block_pulses(p: LinkParams) -> int:
    """Pulses per post-processing block (`qkdtwin.quantum.link.block_pulses`), as a user error.

    Fixed per link, so both ends cut the pulse stream at the same slots and the model's
    finite-size prediction is made for exactly this block (docs/quantum.md).
    """
    try:
        return link.block_pulses(p)
    except ValueError as exc:
        raise UserError(f"qkd: {exc}") from None


def _req(d: dict[str, Any], key: str) -> Any:
    if d.get(key) in (None, ""):
        raise UserError(f"qkd_module config: {key} is required")
    return d[key]


def _addr(d: dict[str, Any], key: str) -> str:
    v = str(_req(d, key))
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        raise UserError(f"qkd_module config: {key} {v!r} is not an IPv4 address") from None
    return v


def _num(d: dict[str, Any], key: str, default: float, lo: float, hi: float,
         integer: bool = False) -> Any:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi \
            or (integer and int(v) != v):
        kind = "an integer" if integer else "a number"
        raise UserError(f"qkd_module config: {key} must be {kind} in [{lo:g}, {hi:g}], "
                        f"got {v!r}")
    return int(v) if integer else float(v)


def parse_config(raw: dict[str, Any]) -> ModuleConfig:
    """Validate a loaded YAML mapping; a UserError names the first bad entry."""
    side = str(_req(raw, "side"))
    if side not in ("a", "b"):
        raise UserError(f"qkd_module config: side must be a or b, got {side!r}")
    qkd = raw.get("qkd") or {}
    if not isinstance(qkd, dict):
        raise UserError("qkd_module config: qkd must be a mapping (the link's vars.qkd)")
    try:
        params = LinkParams.from_vars(qkd)
        if raw.get("time_scale") is not None:
            params = LinkParams.from_vars({"time_scale": raw["time_scale"]}, base=params)
    except ValueError as exc:
        raise UserError(f"qkd_module config: {exc}") from None
    listen = raw.get("listen") or {}
    if not isinstance(listen, dict):
        raise UserError("qkd_module config: listen must be a mapping {host, port}")
    broker = None
    if raw.get("broker"):
        b = raw["broker"]
        if not isinstance(b, dict) or not b.get("host"):
            raise UserError("qkd_module config: broker must be a mapping with host")
        broker = BrokerConfig.from_dict(b)
    tls = raw.get("tls")
    if tls is not None and (not isinstance(tls, dict)
                            or not all(tls.get(k) for k in ("ca", "cert", "key"))):
        raise UserError("qkd_module config: tls must be a mapping {ca, cert, key}")
    cfg = ModuleConfig(
        node=str(_req(raw, "node")), link=str(_req(raw, "link")), side=side,
        peer=str(_req(raw, "peer")), local_ipv4=_addr(raw, "local_ipv4"),
        peer_ipv4=_addr(raw, "peer_ipv4"),
        peer_port=_num(raw, "peer_port", DEFAULT_PEER_PORT, 1, 65535, True),
        host=str(listen.get("host", "127.0.0.1")),
        port=_num(listen, "port", 8700, 0, 65535, True),
        data_dir=Path(str(_req(raw, "data_dir"))), params=params, broker=broker,
        telemetry_interval_s=_num(raw, "telemetry_interval_s", 1.0, 0.05, 3600),
        frame_s=_num(raw, "frame_s", 0.05, 0.001, 10),
        max_inflight_blocks=_num(raw, "max_inflight_blocks", 3, 1, 64, True),
        max_queued_blocks=_num(raw, "max_queued_blocks", 4, 1, 1024, True),
        key_size=_num(raw, "key_size", 256, 8, 1 << 20, True),
        max_key_per_request=_num(raw, "max_key_per_request", 1024, 1, 1 << 20, True),
        rate_window_s=_num(raw, "rate_window_s", 10.0, 1.0, 3600),
        undelivered_ttl_s=_num(raw, "undelivered_ttl_s", 3600.0, 1.0, 1e7),
        tls=PeerTls(str(tls["ca"]), str(tls["cert"]), str(tls["key"])) if tls else None,
        api_token_file=Path(str(raw["api_token_file"])) if raw.get("api_token_file") else None,
    )
    if cfg.key_size % 8:
        raise UserError("qkd_module config: key_size must be a multiple of 8")
    block_pulses(params)  # a link that detects nothing is a configuration error
    return cfg
