"""The QKD module process: engine (Alice or Bob), key store, HTTP API, MQTT telemetry."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from qkdtwin import bus as topics
from qkdtwin import messages as m
from qkdtwin.bus import Bus
from qkdtwin.errors import UserError
from qkdtwin.qkd_module.analytic_engine import engine_class
from qkdtwin.qkd_module.api import ModuleApi
from qkdtwin.qkd_module.config import ModuleConfig, parse_config
from qkdtwin.qkd_module.engine import Engine
from qkdtwin.qkd_module.stats import LinkStats
from qkdtwin.qkd_module.store import KeyStore

log = logging.getLogger("qkdtwin.qkd_module")


def eve_topic(node: str, link: str) -> str:
    """Operator switch of the eavesdropper, read by the a-end module on `node` (the broker
    ACL lets a KM node read qkd/v1/km/<node>/#, and the operator `host` write anything)."""
    return f"{topics.PREFIX}/km/{node}/qkd/{link}/eve"


class QkdModule:
    def __init__(self, cfg: ModuleConfig) -> None:
        self.cfg = cfg
        self.store = KeyStore(cfg.db_path)
        self.stats = LinkStats(cfg.link, cfg.pulses_per_wall_second, cfg.block_pulses,
                               cfg.params.source_rate_hz, cfg.rate_window_s)
        self.bus: Bus | None = Bus(cfg.broker, cfg.node, workers=2) if cfg.broker else None
        cls = engine_class(cfg.params.model, cfg.is_alice)
        self.engine: Engine = cls(cfg, self.store, self.stats, self.event)
        self.api = ModuleApi(self.engine, self.healthz)
        self._stop = threading.Event()

    def event(self, kind: str, **fields: Any) -> None:
        log.info(kind, extra={"link": self.cfg.link, **fields})
        if self.bus is not None:
            self.bus.event(kind, source=f"qkd:{self.cfg.link}", link=self.cfg.link, **fields)

    def telemetry(self) -> dict[str, Any]:
        c = self.cfg
        snap = self.stats.snapshot()
        stored = self.store.stored_bits()
        self.stats.g_stored.set(stored)
        self.stats.g_eve.set(self.engine.eve_fraction)
        return m.build(m.ModuleTelemetry, {
            "source": "qkd", "node": c.node, "link": c.link, "side": c.side,
            "status": self.engine.status, "eve_fraction": self.engine.eve_fraction,
            "stored_bits": stored, "time_scale": c.params.time_scale,
            "block_pulses": c.block_pulses, **snap}).to_payload()

    def healthz(self) -> dict[str, Any]:
        t = self.telemetry()
        return {"ok": True, "service": "qkd_module", **{k: t[k] for k in (
            "node", "link", "side", "status", "qber", "qber_block", "skr_bps", "realtime_factor",
            "stored_bits", "eve_fraction", "blocks_ok", "blocks_aborted", "blocks_failed",
            "blocks_nokey",
            "secret_bits_total", "block_pulses", "time_scale")},
                "sessions": self.engine.sessions, "pulses_total": self.stats.pulses_total,
                "current_block": self.engine.current_block,
                "last_ok_block": self.engine.last_ok_block,
                "eve_since_block": self.engine.eve_since_block,
                "pending_blocks": len(self.store.pending_blocks()),
                "oldest_open_block": self.engine.oldest_open_block()}

    def _on_eve(self, topic: str, payload: dict[str, Any], msg: Any) -> None:
        f = m.decode(payload, m.EveCommand).fraction  # a malformed one: logged by the bus
        if not 0 <= f <= 1:
            log.warning("ignoring eve command with fraction %r", f, extra={"link": self.cfg.link})
            return
        self.engine.set_eve_fraction(float(f))  # type: ignore[attr-defined]
        self._publish()  # confirm at once (the CLI waits for it)

    def _publish(self) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.publish(topics.telemetry(self.cfg.node, self.cfg.link), self.telemetry(),
                             qos=0)

    def start(self) -> QkdModule:
        c = self.cfg
        self.api.start()
        if self.bus is not None:
            if c.is_alice:
                self.bus.subscribe(eve_topic(c.node, c.link), self._on_eve)
            self.bus.start(wait=0)
        threading.Thread(target=self.engine.run, daemon=True, name=f"engine-{c.link}").start()
        threading.Thread(target=self._telemetry_loop, daemon=True, name="telemetry").start()
        log.info("qkd module for %s (side %s) serving ETSI 014 on %s:%d; block of %d pulses",
                 c.link, c.side, c.host, self.api.port, c.block_pulses, extra={"link": c.link})
        self.event("qkd_module_started", side=c.side, block_pulses=c.block_pulses,
                   time_scale=c.params.time_scale)
        return self

    def _telemetry_loop(self) -> None:
        last_expiry = 0.0
        while not self._stop.wait(self.cfg.telemetry_interval_s):
            try:
                self._publish()
                if not self.cfg.is_alice and time.monotonic() - last_expiry > 60.0:
                    last_expiry = time.monotonic()
                    n = self.store.expire(self.cfg.undelivered_ttl_s)
                    if n:
                        self.event("qkd_keys_expired", keys=n,
                                   ttl_s=self.cfg.undelivered_ttl_s)
            except Exception:  # telemetry must never kill the module
                log.exception("telemetry failed")

    def stop(self) -> None:
        self._stop.set()
        self.engine.stop()
        self.api.stop()
        if self.bus is not None:
            self.bus.stop()
        self.store.close()


def main(raw: dict[str, Any]) -> None:
    cfg = parse_config(raw)
    try:
        module = QkdModule(cfg).start()
    except OSError as exc:
        raise UserError(f"cannot start the module: {exc}") from None
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    module.stop()
