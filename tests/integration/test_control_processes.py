"""The five control elements as real processes (`python -m qkdtwin.control.<element>
--config PATH`) on loopback against a real Mosquitto, driven by small contract-following
KMs: the paper's scenario, an eavesdropper alarm with re-routing, a broker restart and an
admission restart in the middle of live sessions (no session lost)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.support.control import (
    ELEMENTS,
    ControlPlane,
    FakeKM,
    register_star6,
    telemetry,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


@pytest.fixture
def plane(broker, test_ca, tmp_path):
    pl = ControlPlane(broker, test_ca, tmp_path, USERS)
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
