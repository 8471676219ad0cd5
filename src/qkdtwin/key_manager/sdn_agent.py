"""Registers this KM node and its PHYS links with the SDN controller (ETSI GS QKD 015
subset, docs/architecture.md "SDN controller REST"); retries in the background until the
controller answers."""

from __future__ import annotations

import logging
import threading
from typing import Any

from qkdtwin.etsi015 import SDN_BASE
from qkdtwin.key_manager.config import KmConfig
from qkdtwin.key_manager.peers import HttpClient, PeerError

log = logging.getLogger("qkdtwin.key_manager.sdn")


def node_document(cfg: KmConfig, status: str = "up") -> dict[str, Any]:
    return {"qkd_node": {
        "qkdn_id": cfg.node, "qkdn_status": status,
        "qkd_links": {"qkd_link": [
            {"qkdl_id": lc.link, "qkdl_type": "PHYS", "qkdl_status": "up",
             "qkdl_local": {"qkdn_id": cfg.node, "qkdi_id": lc.interface or lc.link},
             "qkdl_remote": {"qkdn_id": lc.peer}} for lc in cfg.links]}}}


class SdnAgent:
    def __init__(self, cfg: KmConfig) -> None:
        self.cfg = cfg
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._client = HttpClient(cfg.ca, cfg.cert, cfg.key, pool=1)

    def start(self) -> SdnAgent:
        if self.cfg.sdn_url:
            threading.Thread(target=self._loop, daemon=True, name="sdn-agent").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        url = f"{self.cfg.sdn_url.rstrip('/')}{SDN_BASE}/{self.cfg.node}"
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._client.put(url, node_document(self.cfg), timeout=5)
                self.registered.set()
                log.info("registered with the SDN controller", extra={"url": url})
                return
            except PeerError as exc:
                log.warning("SDN registration failed: %s", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
