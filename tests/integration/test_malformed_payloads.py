"""Issue 12, "Done when": malformed payloads on every inbound topic of a deployed lab are
logged and ignored, and the lab keeps working.

On the shared line3 copy (`deployed_lab`: control elements on `ctl`, km0 – km1 – km2 with
real QKD modules, the broker node with the recorder) the operator identity (CN=host, which
the broker ACL lets write every qkd/v1 topic) publishes, on each topic an element or KM
reads, a payload of a wrong type, one with a required field missing, one of an unknown
schema version, one with a field of the wrong type, one that is not JSON and 1 MiB of
garbage. None is retained, so the retained topology and alarms stay as they were. Then:

* every supervisord program of every node is still RUNNING with the same pid (nothing
  crashed and was restarted), the control elements' and KMs' /healthz say ok;
* each receiver logged every payload it refused, with its topic and reason (one JSON line
  per payload, written by qkdtwin.bus);
* an ETSI 004 session relayed over the three KMs delivers the same keys at both ends.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests

from tests.support.waiting import wait_for as support_wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUPERVISORCTL = "-m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"
HEALTH_PORTS = {"access": 9101, "admission": 9102, "routing": 9103, "monitoring": 9105}
KEY_WAIT_S = 60.0
P = "qkd/v1"


def garbage(kind: str) -> list[bytes]:
    """The malformed payloads sent on a topic whose messages have type ``kind``."""
    def js(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj).encode()

    return [
        js({"type": "no_such_type", "v": 1, "session_id": "malformed-test", "km": "km0"}),
        js({"type": kind, "v": 1}),                       # required fields missing
        js({"type": kind, "v": 99}),                      # unknown schema version
        js({"type": kind, "v": 1, "session_id": 42, "km": ["x"], "link": 7, "node": 7,
            "source": 7, "sae_id": 7, "user": 7, "nodes": 7, "fraction": "all", "element": 7,
            "kind": 7}),                                  # fields of the wrong type
        b"{this is not json",
        os.urandom(1 << 20),                              # 1 MiB of garbage
    ]


def inbound(links: list[tuple[str, str]], kms: list[str]) -> dict[str, tuple[str, list[str]]]:
    """topic -> (message type that belongs there, the log files of its receivers)."""
    out: dict[str, tuple[str, list[str]]] = {
        f"{P}/admission/in/km0": ("config_request", ["ctl/qkdtwin-admission"]),
        f"{P}/access/in": ("authenticate", ["ctl/qkdtwin-access"]),
        f"{P}/access/admin": ("user_add", ["ctl/qkdtwin-access"]),
        f"{P}/routing/in": ("path_request", ["ctl/qkdtwin-routing"]),
        f"{P}/topology": ("topology", ["ctl/qkdtwin-routing", "ctl/qkdtwin-monitoring",
                                       "broker/qkdtwin-recorder"]),
        f"{P}/events/malformed-test": ("event", ["broker/qkdtwin-recorder"]),
    }
    for km in kms:
        out[f"{P}/km/{km}/config"] = ("session_config", [f"{km}/key_manager"])
        out[f"{P}/km/{km}/delete"] = ("session_delete", [f"{km}/key_manager"])
    for a, b in links:
        lid = f"{a}-{b}"
        out[f"{P}/alarm/{lid}"] = ("alarm", ["ctl/qkdtwin-admission", "ctl/qkdtwin-routing",
                                             "broker/qkdtwin-recorder",
                                             *(f"{km}/key_manager" for km in kms)])
        out[f"{P}/telemetry/{a}/{lid}"] = ("telemetry", ["ctl/qkdtwin-monitoring"])
        out[f"{P}/km/{a}/qkd/{lid}/eve"] = ("eve", [f"{a}/qkd-{lid}"])  # the a-end module
    return out


class Lab:
    def __init__(self, deployed) -> None:
        from qkdtwin.labops.lab import DeployedLab

        self.d = deployed
        self.sae_lab = DeployedLab.load(deployed.lab.path)
        self.python = deployed.all_vars["qkdtwin_python"]
        self.nodes = sorted(deployed.inventory["all"]["hosts"])

    def netns(self, node: str, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.d.lab.namespace(node), *argv],
                              capture_output=True, text=True, timeout=60).stdout

    def programs(self, node: str) -> dict[str, tuple[str, str]]:
        """supervisorctl status of a node: program -> (state, pid)."""
        out = self.netns(node, self.python, *SUPERVISORCTL.split(), "status")
        got = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = parts[3].rstrip(",") if len(parts) > 3 and parts[2] == "pid" else ""
                got[parts[0]] = (parts[1], pid)
        return got

    def log(self, ref: str) -> Path:
        node, name = ref.split("/")
        return Path(self.d.hostvars(node)["qkdtwin_data_dir"]) / "logs" / f"{name}.log"

    def refusals(self, ref: str, since: float) -> dict[str, set[str]]:
        """topic -> reasons of the payloads a receiver logged as dropped since ``since``."""
        out: dict[str, set[str]] = {}
        for line in self.log(ref).read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("ts", 0) >= since \
                    and str(rec.get("msg", "")).startswith("dropping malformed message"):
                out.setdefault(rec.get("topic"), set()).add(rec.get("reason"))
        return out

    def client(self, sae: str):
        from qkdtwin.sae.client import SaeClient

        cert, key = self.sae_lab.sae_identity(sae)
        return SaeClient(self.sae_lab.km_url(self.sae_lab.sae_km(sae)), cert, key,
                         self.sae_lab.ca, sae_id=sae, timeout=60)

    def km_health(self, km: str) -> dict[str, Any]:
        return requests.get(f"{self.sae_lab.km_url(km)}/healthz", verify=str(self.sae_lab.ca),
                            cert=self.sae_lab.host_identity(), timeout=10).json()


def operator_client(lab: Lab) -> mqtt.Client:
    """A plain MQTT client as the operator (CN=host): publishes bytes as they are."""
    b = lab.sae_lab.broker_config()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"host-malformed-"
                    f"{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(b.ca), certfile=str(b.cert), keyfile=str(b.key),
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.connect(b.host, b.port, keepalive=30)
    c.loop_start()
    return c


# this file polls every 0.5 s
wait_for = partial(support_wait_for, step=0.5)


@pytest.fixture(scope="module")
def lab(deployed_lab) -> Lab:
    lab = Lab(deployed_lab)
    for km in ("km0", "km1", "km2"):
        wait_for(lambda km=km: lab.km_health(km).get("ok"), 120, f"{km} healthy")
    return lab


def test_malformed_payloads_on_every_inbound_topic_are_logged_and_ignored(lab):
    links = [(lk["a"], lk["b"]) for lk in lab.d.all_vars["qkdtwin_qkd_links"]]
    topics = inbound(links, ["km0", "km1", "km2"])
    before = {n: lab.programs(n) for n in lab.nodes}
    assert all(st == "RUNNING" for progs in before.values() for st, _ in progs.values()), before
    t0 = time.time() - 1.0
    client = operator_client(lab)
    try:
        for topic, (kind, _) in topics.items():
            for body in garbage(kind):
                client.publish(topic, body, qos=1).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()
    # every receiver logged every payload it refused, each with its own reason
    sent = len(garbage("x"))
    expected = {(ref, topic) for topic, (_, refs) in topics.items() for ref in refs}

    def missing() -> list[str]:
        got = {ref: lab.refusals(ref, t0) for ref, _ in expected}
        return [f"{ref} on {topic}: {sorted(got[ref].get(topic, ()))}"
                for ref, topic in sorted(expected) if len(got[ref].get(topic, ())) < sent]

    deadline = time.monotonic() + 60
    while missing() and time.monotonic() < deadline:
        time.sleep(1.0)
    unlogged = missing()  # asserted last: first what matters most, that the lab survived
    # nothing crashed or was restarted; the elements and KMs say they are healthy
    after = {n: lab.programs(n) for n in lab.nodes}
    assert after == before
    for role, port in HEALTH_PORTS.items():
        h = json.loads(lab.netns("ctl", "curl", "-sf", f"http://127.0.0.1:{port}/healthz"))
        assert h["ok"], (role, h)
    for km in ("km0", "km1", "km2"):
        assert lab.km_health(km)["ok"], km
    run_relayed_004_session(lab)
    assert not unlogged, "refusals not logged: " + "; ".join(unlogged)


def run_relayed_004_session(lab: Lab) -> None:
    """sae-a0@km0 and sae-a2@km2 (relayed by km1) get the same three keys, then close."""
    a0, a2 = lab.client("sae-a0"), lab.client("sae-a2")
    sid = str(uuid.uuid4())
    qos = {"key_chunk_size": 32, "timeout": 300, "priority": 4}
    try:
        r0 = a0.open_connect("sae-a0", "sae-a2", qos, sid)
        assert r0.http == 200, r0.body
        r2 = a2.open_connect("sae-a0", "sae-a2", {**qos, "timeout": 5000}, sid)
        assert r2.http == 200 and r2.status == 0, r2.body
        try:
            got0 = [a0.wait_key(sid, timeout=KEY_WAIT_S) for _ in range(3)]
            got2 = [a2.wait_key(sid, index=i, timeout=KEY_WAIT_S) for i in range(3)]
            assert [g.status for g in got0 + got2] == [0] * 6, [g.body for g in got0 + got2]
            keys0 = [g.body["key_buffer"] for g in got0]
            assert keys0 == [g.body["key_buffer"] for g in got2]
            assert len({base64.b64decode(k) for k in keys0}) == 3
        finally:
            closed = a0.close(sid)
        assert closed.http == 200 and closed.status == 0, closed.body
    finally:
        a0.close_connection()
        a2.close_connection()
