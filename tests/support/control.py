"""Test helpers for the control plane: a small "KM" that follows the MQTT contract of
docs/architecture.md, SDN registration of a star6-like topology, and waiting helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import requests
import yaml

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.etsi015 import SDN_BASE
from tests.support.broker import free_port
from tests.support.pki import TestCA
from tests.support.procs import terminate_all
from tests.support.waiting import wait_for

# star6: km0 in the middle, km4-km5 extra link (labs/star6.clab.yml)
STAR6_LINKS = [("km0", "km1"), ("km0", "km2"), ("km0", "km3"), ("km0", "km4"), ("km0", "km5"),
               ("km4", "km5")]
# The SDN controller's inventory (config `nodes`): the KMs and the control elements' nodes.
STAR6_NODES = {n: {} for n in (*(f"km{i}" for i in range(6)), "access", "routing", "sdn",
                               "admission", "monitoring")}


def broker_cfg(broker, ca: TestCA, cn: str) -> dict[str, Any]:
    ident = ca.issue(cn)
    return {"host": "127.0.0.1", "port": broker.port, "ca": ca.ca, "cert": ident.cert,
            "key": ident.key}


def make_bus(broker, ca: TestCA, cn: str) -> Bus:
    b = Bus(BrokerConfig.from_dict(broker_cfg(broker, ca, cn)), cn).start()
    assert b.wait_connected(5)
    return b


class FakeKM:
    """Enough of a Key Manager to drive the control plane: it authenticates, requests
    configuration, signals key requests and closes, records what admission sends and
    confirms deletions like a real KM."""

    def __init__(self, broker, ca: TestCA, name: str, confirm: bool = True) -> None:
        self.name = name
        self.confirm = confirm
        self.bus = make_bus(broker, ca, name)
        self.configs: list[dict[str, Any]] = []
        self.deletes: list[dict[str, Any]] = []
        self.table: dict[str, dict[str, Any]] = {}  # forwarding table: session -> entry
        self._lock = threading.Lock()
        self.bus.subscribe(bus.km_config(name), self._on_config)
        self.bus.subscribe(bus.km_delete(name), self._on_delete)
        time.sleep(0.1)

    def _on_config(self, topic, p, msg) -> None:
        m.decode(p, m.SessionConfig)  # what a real KM accepts
        with self._lock:
            self.configs.append(p)
            self.table[p["session_id"]] = p

    def _on_delete(self, topic, p, msg) -> None:
        m.decode(p, m.SessionDelete)
        with self._lock:
            self.deletes.append(p)
            self.table.pop(p["session_id"], None)
        if self.confirm:
            self.bus.publish(bus.admission_in(self.name), m.DeletionConfirm(
                km=self.name, session_id=p["session_id"]).to_payload())

    def authenticate(self, sae_id: str, user: str, peer: str, ou: str = "sae",
                     cn: str | None = None, session_id: str | None = None) -> dict[str, Any]:
        return self.bus.request(bus.ACCESS_IN, m.Authenticate(
            km=self.name, sae_id=sae_id, peer_sae_id=peer, session_id=session_id,
            cert={"cn": cn or sae_id, "o": user, "ou": ou, "fingerprint": "00"}).to_payload())

    def open(self, sae_id: str, peer: str, user: str, session_id: str | None = None,
             api: str = "004", **qos: Any) -> str:
        sid = session_id or str(uuid.uuid4())
        self.bus.publish(bus.admission_in(self.name), m.ConfigRequest(
            km=self.name, session_id=sid, user=user, sae_id=sae_id, peer_sae_id=peer, api=api,
            qos=qos).to_payload())
        return sid

    def key_request(self, sid: str, bits: int = 256) -> None:
        self.bus.publish(bus.admission_in(self.name), m.KeyRequest(km=self.name, session_id=sid,
                                                        bits=bits).to_payload())

    def close(self, sid: str) -> None:
        self.bus.publish(bus.admission_in(self.name), m.CloseRequest(km=self.name,
                                                          session_id=sid).to_payload())

    def config_for(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            return self.table.get(sid)

    def deleted(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            return next((d for d in self.deletes if d["session_id"] == sid), None)

    def stop(self) -> None:
        self.bus.stop()


def register_star6(sdn_url: str, ca: TestCA, links=STAR6_LINKS) -> None:
    """Every KM registers its node and PHYS links at the SDN controller (ETSI 015 subset)."""
    nodes = sorted({n for lk in links for n in lk})
    for node in nodes:
        ident = ca.issue(node)
        mine = [{"qkdl_id": f"{a}-{b}", "qkdl_type": "PHYS", "qkdl_status": "up",
                 "qkdl_local": {"qkdn_id": node, "qkdi_id": "eth1"},
                 "qkdl_remote": {"qkdn_id": b if a == node else a}}
                for a, b in links if node in (a, b)]
        r = requests.put(f"{sdn_url}{SDN_BASE}/{node}",
                         json={"qkd_node": {"qkdn_id": node, "qkdn_status": "up",
                                            "qkd_links": {"qkd_link": mine}}},
                         cert=(ident.cert, ident.key), verify=ca.ca, timeout=5)
        r.raise_for_status()


def telemetry(b: Bus, link: str, qber: float = 0.03, skr: float = 5000.0,
              status: str = "up", node: str | None = None) -> None:
    node = node or link.split("-")[0]
    b.publish(bus.telemetry(node, link), m.ModuleTelemetry(
        source="qkd", node=node, link=link, qber=qber, skr_bps=skr, stored_bits=100000,
        status=status).to_payload())


ELEMENTS = ("access", "routing", "sdn", "admission", "monitoring")


class ControlPlane:
    """The five elements as real processes (`python -m qkdtwin.control.<element>`)."""

    __test__ = False

    def __init__(self, broker, ca: TestCA, tmp_path, users: list[dict[str, Any]],
                 overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.dir = tmp_path
        self.ca = ca
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {e: free_port() for e in ELEMENTS}
        sdn = ca.issue("sdn")
        self.sdn_url = f"https://127.0.0.1:{self.ports['sdn']}"
        self.configs = {}
        for e in ELEMENTS:
            cfg = {"element": e, "broker": broker_cfg(broker, ca, e),
                   "data_dir": str(tmp_path / e), "log_level": "info",
                   "health": {"host": "127.0.0.1", "port": self.ports[e]}}
            self.configs[e] = cfg
        self.configs["access"]["users"] = users
        self.configs["sdn"].update({"listen": {"host": "127.0.0.1", "port": self.ports["sdn"]},
                                    "tls": {"ca": ca.ca, "cert": sdn.cert, "key": sdn.key},
                                    "nodes": STAR6_NODES})
        self.configs["admission"].update({"peer_wait_s": 3, "inactivity_timeout_s": 30,
                                          "confirm_timeout_s": 3, "sdn": {"url": self.sdn_url}})
        self.configs["monitoring"].update({"interval_s": 0.5, "stale_s": 5,
                                           "links": {"km4-km5": {"intrinsic_qber": 0.033}}})
        for e, extra in (overrides or {}).items():
            self.configs[e].update(extra)
        for e in ELEMENTS:
            self.start(e)
        for e in ELEMENTS:
            wait_for(lambda e=e: self.healthy(e), timeout=20)

    def start(self, e: str) -> None:
        path = self.dir / f"{e}.yml"
        path.write_text(yaml.safe_dump(self.configs[e]))
        log = open(self.dir / f"{e}.log", "ab")
        self.procs[e] = subprocess.Popen(
            [sys.executable, "-m", f"qkdtwin.control.{e}", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())

    def healthy(self, e: str) -> bool:
        assert self.procs[e].poll() is None, (self.dir / f"{e}.log").read_text()[-2000:]
        try:
            if e == "sdn":
                host = self.ca.issue("host", ou="operator")
                r = requests.get(f"{self.sdn_url}/healthz", cert=(host.cert, host.key),
                                 verify=self.ca.ca, timeout=2)
            else:
                r = requests.get(f"http://127.0.0.1:{self.ports[e]}/healthz", timeout=2)
            return r.status_code == 200 and r.json()["ok"]
        except requests.RequestException:
            return False

    def health(self, e: str) -> dict:
        return requests.get(f"http://127.0.0.1:{self.ports[e]}/healthz", timeout=2).json()

    def kill(self, e: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs[e]
        p.send_signal(sig)
        p.wait(10)

    def stop(self) -> None:
        terminate_all(self.procs.values(), 10)
