"""The five control elements as real processes (`python -m qkdtwin.control.<element>
--config PATH`) on loopback against a real Mosquitto, driven by small contract-following
KMs: the paper's scenario, an eavesdropper alarm with re-routing, a broker restart and an
admission restart in the middle of live sessions (no session lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from tests.support.broker import free_port
from tests.support.control import FakeKM, broker_cfg, register_star6, telemetry, wait_for

pytestmark = pytest.mark.integration

USERS = yaml.safe_load(open("labs/star6.users.yml"))["users"]
ELEMENTS = ("access", "routing", "sdn", "admission", "monitoring")


class Plane:
    def __init__(self, broker, ca, tmp_path) -> None:
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
        self.configs["access"]["users"] = USERS
        self.configs["sdn"].update({"listen": {"host": "127.0.0.1", "port": self.ports["sdn"]},
                                    "tls": {"ca": ca.ca, "cert": sdn.cert, "key": sdn.key}})
        self.configs["admission"].update({"peer_wait_s": 3, "inactivity_timeout_s": 30,
                                          "confirm_timeout_s": 3, "sdn": {"url": self.sdn_url}})
        self.configs["monitoring"].update({"interval_s": 0.5, "stale_s": 5,
                                           "links": {"km4-km5": {"intrinsic_qber": 0.033}}})
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
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def plane(broker, test_ca, tmp_path):
    pl = Plane(broker, test_ca, tmp_path)
    register_star6(pl.sdn_url, test_ca)
    wait_for(lambda: pl.health("routing")["links"] == 6, timeout=10)
    yield pl
    pl.stop()


@pytest.fixture
def kms(broker, test_ca):
    out = {f"km{i}": FakeKM(broker, test_ca, f"km{i}") for i in range(6)}
    yield out
    for k in out.values():
        k.stop()


def open_pairs(kms, pairs):
    sids = {}
    for a, sa, b, sb, user in pairs:
        sids[(a, b)] = kms[a].open(sa, sb, user, max_bps=2048)
    for a, sa, b, sb, user in pairs:
        kms[b].open(sb, sa, user, session_id=sids[(a, b)], max_bps=2048)
    return sids


PAPER = [("km0", "sae-0", "km1", "sae-1", "ops"), ("km2", "sae-2", "km3", "sae-3", "research"),
         ("km4", "sae-4", "km5", "sae-5", "iot")]


def all_configured(kms, sids, routes):
    return all(kms[k].config_for(sids[pair]) for pair, path in routes.items() for k in path)


def test_paper_scenario_broker_and_admission_restart(plane, kms, broker):
    sids = open_pairs(kms, PAPER)
    routes = {("km0", "km1"): ["km0", "km1"], ("km2", "km3"): ["km2", "km0", "km3"],
              ("km4", "km5"): ["km4", "km5"]}
    wait_for(lambda: all_configured(kms, sids, routes), timeout=15)
    assert plane.health("admission")["sessions"] == {"active": 3}
    assert kms["km0"].config_for(sids[("km2", "km3")])["role"] == "transit"
    # the broker restarts in the middle: every element reconnects and keeps its sessions
    broker.restart()
    time.sleep(1.0)  # let every client notice the lost connection
    wait_for(lambda: all(plane.healthy(e) for e in ELEMENTS), timeout=20)
    for k in kms.values():
        wait_for(lambda k=k: k.bus.connected, timeout=15)
    assert plane.health("admission")["sessions"] == {"active": 3}
    assert plane.health("routing")["reservations"] == 3
    # admission is subscribed again and still knows the session: a close deletes it
    s01 = sids[("km0", "km1")]
    wait_for(lambda: kms["km1"].close(s01) or kms["km0"].deleted(s01), timeout=15, step=0.5)
    assert kms["km0"].deleted(s01)["reason"] == "peer closed"
    wait_for(lambda: kms["km1"].deleted(s01), timeout=5)
    wait_for(lambda: plane.health("admission")["sessions"] == {"active": 2}, timeout=10)
    # the admission element itself restarts (SIGKILL): sessions come back from SQLite
    plane.kill("admission", signal.SIGKILL)
    plane.start("admission")
    wait_for(lambda: plane.healthy("admission"), timeout=20)
    assert plane.health("admission")["sessions"] == {"active": 2}
    for k in kms.values():  # KMs reconnect too (their bus does it by itself)
        wait_for(lambda k=k: k.bus.connected, timeout=15)
    # closing one side still deletes the relayed session on every KM of its route
    sid = sids[("km2", "km3")]
    kms["km2"].close(sid)
    for k in ("km2", "km0", "km3"):
        wait_for(lambda k=k: kms[k].deleted(sid), timeout=10)
    wait_for(lambda: plane.health("admission")["sessions"] == {"active": 1}, timeout=10)
    wait_for(lambda: plane.health("routing")["reservations"] == 1, timeout=10)


def test_eavesdropper_alarm_reroutes_live_session(plane, kms, broker, test_ca):
    sids = open_pairs(kms, [PAPER[2]])
    sid = sids[("km4", "km5")]
    wait_for(lambda: kms["km4"].config_for(sid) and kms["km5"].config_for(sid), timeout=15)
    assert kms["km0"].config_for(sid) is None
    module = FakeKM(broker, test_ca, "qkd-km4")  # a module's telemetry publisher
    telemetry(module.bus, "km4-km5", qber=0.034, node="km4")
    time.sleep(1.0)
    telemetry(module.bus, "km4-km5", qber=0.09, node="km4")  # partial intercept-resend
    # below 0.11 but above intrinsic + 0.03: suspicious, and an alternative path exists
    c0 = wait_for(lambda: kms["km0"].config_for(sid), timeout=10)
    assert c0["role"] == "transit"
    assert {kms["km4"].config_for(sid)["update"], kms["km5"].config_for(sid)["update"]} == {True}
    assert kms["km4"].deleted(sid) is None and kms["km5"].deleted(sid) is None
    assert plane.health("monitoring")["alarms"] == {"km4-km5": "qber_suspicious"}
    assert plane.health("admission")["sessions"] == {"active": 1}
    module.stop()
