"""``python -m qkdtwin.key_manager --config /etc/qkdtwin/key_manager.yml``"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.key_manager.app import create_app
from qkdtwin.key_manager.config import parse_config
from qkdtwin.key_manager.manager import KeyManager
from qkdtwin.key_manager.sdn_agent import SdnAgent
from qkdtwin.key_manager.server import make_server
from qkdtwin.service import run_service

log = logging.getLogger("qkdtwin.key_manager")


def main(raw: dict[str, Any]) -> None:
    cfg = parse_config(raw)
    bus = Bus(BrokerConfig.from_dict(raw["broker"]), cfg.node) if raw.get("broker") else None
    km = KeyManager(cfg, bus).start()
    agent = SdnAgent(cfg).start()
    server = make_server(cfg, create_app(km))
    server.shutdown_timeout = 1

    def _term(signum: int, frame: Any) -> None:
        # stop from another thread (serve() runs here); every change is already committed,
        # so if keep-alive connections hold the workers, leaving hard is safe
        threading.Thread(target=server.stop, daemon=True).start()
        threading.Timer(0.5, os._exit, (0,)).start()

    signal.signal(signal.SIGTERM, _term)
    server.prepare()
    log.info("listening", extra={"host": cfg.host, "port": server.bind_addr[1]})
    try:
        server.serve()
    finally:
        agent.stop()
        km.stop(close_store=False)


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin Key Manager (ETSI 014/004, relay)"))
