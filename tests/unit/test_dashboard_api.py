"""The dashboard's live state and JSON API, fed with messages shaped as the elements publish
them (docs/architecture.md); the browser test is tests/integration/test_dashboard.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdtwin.dashboard.app import create_app
from qkdtwin.dashboard.state import LiveState
from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.labops.nodes import interface_argv
from qkdtwin.topology import load_lab

pytestmark = pytest.mark.unit

NODES = {"km0": {"mgmt_ipv4": "10.0.0.1", "roles": ["km"]},
         "km1": {"mgmt_ipv4": "10.0.0.2", "roles": ["km"]},
         "km2": {"mgmt_ipv4": "10.0.0.3", "roles": ["km"]},
         "ctl": {"mgmt_ipv4": "10.0.0.9", "roles": ["admission", "access"]}}
LINKS = [{"id": "km0-km1", "a": "km0", "b": "km1", "a_interface": "eth1", "b_interface": "eth1"},
         {"id": "km1-km2", "a": "km1", "b": "km2", "a_interface": "eth2", "b_interface": "eth1"},
         {"id": "km0-km2", "a": "km0", "b": "km2", "a_interface": "eth2", "b_interface": "eth2"}]


def ev(element, kind, sid=None, ts=1.0, **f):
    body = {"type": "event", "ts": ts, "element": element, "kind": kind, **f}
    if sid:
        body["session_id"] = sid
    return f"qkd/v1/events/{element}", body


class Actions:
    def __init__(self):
        self.calls = []

    def eve(self, link, fraction):
        self.calls.append(("eve", link, fraction))
        return {"eve_fraction": fraction}

    def set_link(self, link, up):
        if link == "km1-km2":
            raise UserError("ip netns exec ... failed: Cannot find device")
        self.calls.append(("link", link, up))
        return {"link": link, "state": "up" if up else "down"}


def test_link_states_from_telemetry_alarms_and_topology():
    s = LiveState("t", NODES, LINKS)
    assert {lk["state"] for lk in s.snapshot()["links"]} == {"unknown"}
    s.feed("qkd/v1/telemetry/km0/km0-km1", {"type": "telemetry", "source": "qkd", "node": "km0",
                                             "link": "km0-km1", "qber": 0.03, "skr_bps": 900.0,
                                             "stored_bits": 4096, "status": "up"})
    s.feed("qkd/v1/telemetry/km1/km0-km1", {"type": "telemetry", "source": "qkd", "node": "km1",
                                             "link": "km0-km1", "qber": 0.5, "status": "up"})
    s.feed("qkd/v1/telemetry/km1/km0-km1", {"type": "telemetry", "source": "km", "node": "km1",
                                             "link": "km0-km1", "pool_bits": 2048})
    s.feed("qkd/v1/telemetry/km1/km1-km2", {"type": "telemetry", "source": "qkd", "node": "km1",
                                             "link": "km1-km2", "status": "connecting"})
    s.feed("qkd/v1/alarm/km0-km2", {"type": "alarm", "link": "km0-km2", "kind": "link_down"})
    links = {lk["id"]: lk for lk in s.snapshot()["links"]}
    assert links["km0-km1"]["state"] == "up"
    assert links["km0-km1"]["qber"] == 0.03  # the a end's figures win
    assert links["km0-km1"]["pool_bits"] == {"km1": 2048}
    assert links["km1-km2"]["state"] == "connecting"
    assert links["km0-km2"]["state"] == "down"
    s.feed("qkd/v1/alarm/km0-km2", {"type": "alarm", "link": "km0-km2", "kind": "clear"})
    s.feed("qkd/v1/topology", {"type": "topology", "nodes": [{"id": "km0", "status": "up"}],
                               "links": [{"id": "km0-km2", "status": "down"}]})
    links = {lk["id"]: lk for lk in s.snapshot()["links"]}
    assert links["km0-km2"]["state"] == "down" and links["km0-km2"]["alarm"] is None
    s.feed("qkd/v1/alarm/km0-km1", {"type": "alarm", "link": "km0-km1", "kind": "qber_high"})
    assert {lk["id"]: lk["state"] for lk in s.snapshot()["links"]}["km0-km1"] == "alarm"
    # messages about unknown links or junk do not break anything
    s.feed("qkd/v1/telemetry/x/zz", {"link": "zz"})
    s.feed("qkd/v1/alarm/zz", {"kind": "qber_high"})
    s.feed("qkd/v1/topology", {"nodes": "bad", "links": [1, 2]})


def test_sessions_from_admission_events_and_from_km_hops():
    s = LiveState("t", NODES, LINKS)
    s.feed(*ev("admission", "config_request_received", "s1", km="km0", sae_id="a",
               peer_sae_id="b", api="004"))
    s.feed(*ev("admission", "session_accepted", "s1", user="u", api="004"))
    s.feed(*ev("admission", "path_assigned", "s1", path=["km0", "km1", "km2"],
               links=["km0-km1", "km1-km2"]))
    s.feed(*ev("km0", "keys_delivered", "s1", number=3, sae_id="a"))
    s.feed(*ev("km2", "keys_delivered", "s1", number=3, sae_id="b", side="slave"))
    s.feed(*ev("admission", "session_rerouted", "s1", old_path=["km0", "km1", "km2"],
               path=["km0", "km2"], links=["km0-km2"], link="km1-km2"))
    # a KM-only session (no admission events): the path from the KMs' next hops
    s.feed(*ev("km1", "session_configured", "s2", role="destination", prev_hop="km0",
               next_hop=None))
    s.feed(*ev("km0", "session_configured", "s2", role="source", prev_hop=None,
               next_hop="km1"))
    ss = {x["id"]: x for x in s.snapshot(now=2.0)["sessions"]}
    assert ss["s1"]["saes"] == ["a", "b"] and ss["s1"]["user"] == "u"
    assert ss["s1"]["path"] == ["km0", "km2"] and ss["s1"]["old_path"] == ["km0", "km1", "km2"]
    assert ss["s1"]["reroutes"] == 1 and ss["s1"]["keys"] == 3 and ss["s1"]["state"] == "active"
    assert ss["s2"]["path"] == ["km0", "km1"]
    s.feed(*ev("admission", "session_terminated", "s1", ts=3.0, reason="closed"))
    ss = {x["id"]: x for x in s.snapshot(now=4.0)["sessions"]}
    assert ss["s1"]["state"] == "terminated" and ss["s1"]["reason"] == "closed"
    assert "s1" not in {x["id"] for x in s.snapshot(now=3.0 + 61)["sessions"]}  # aged out
    # an event of an unknown session that is not a start does not create one
    s.feed(*ev("km0", "relay_ack", "zz"))
    assert "zz" not in {x["id"] for x in s.snapshot(now=4.0)["sessions"]}


def test_api_state_events_and_controls():
    s = LiveState("t", NODES, LINKS)
    acts = Actions()
    c = create_app(s, acts, token="tok").test_client()
    c.environ_base["HTTP_X_QKDTWIN_TOKEN"] = "tok"  # what the page sends
    for i in range(5):
        s.feed(*ev("km0", "relay_send", "s", ts=float(i), to_km="km1"))
    r = c.get("/api/state").get_json()
    assert r["lab"] == "t" and r["controls"] is True and len(r["links"]) == 3
    e = c.get("/api/events?after=3").get_json()
    assert [x["seq"] for x in e["events"]] == [4, 5] and e["events"][0]["category"] == "relay"
    assert c.get("/api/events?after=x").status_code == 400
    assert "cytoscape.min.js" in c.get("/").get_data(as_text=True)
    assert c.get("/static/cytoscape.min.js").status_code == 200

    assert c.post("/api/links/km0-km1/eve", json={"fraction": 0.25}).get_json()["ok"]
    assert acts.calls[-1] == ("eve", "km0-km1", 0.25)
    for bad in ({"fraction": 2}, {"fraction": "x"}, {"fraction": True}, {}, None):
        r = c.post("/api/links/km0-km1/eve", json=bad)
        assert r.status_code == 400 and "fraction" in r.get_json()["error"]
    assert c.post("/api/links/nope/eve", json={"fraction": 0.1}).status_code == 404
    assert c.post("/api/links/km0-km1/cut").status_code == 200
    assert {lk["id"]: lk["state"] for lk in c.get("/api/state").get_json()["links"]}[
        "km0-km1"] == "cut"
    assert c.post("/api/links/km0-km1/restore").status_code == 200
    r = c.post("/api/links/km1-km2/cut")
    assert r.status_code == 502 and "Cannot find device" in r.get_json()["error"]
    kinds = [x["kind"] for x in c.get("/api/events?after=5").get_json()["events"]]
    assert kinds == ["operator_eve", "operator_link_cut", "operator_link_restore",
                     "operator_link_cut_failed"]
    assert c.get("/api/nothing").status_code == 404

    off = create_app(s, None, token="tok").test_client()
    off.environ_base["HTTP_X_QKDTWIN_TOKEN"] = "tok"
    assert off.get("/api/state").get_json()["controls"] is False
    assert off.post("/api/links/km0-km1/cut").status_code == 503


def test_controls_need_the_token_the_origin_and_a_known_host():
    """Issue 13, M8: the checks of qkdtwin.dashboard.guard, one refusal at a time (the
    cross-site request from a real browser is in tests/integration/test_dashboard.py)."""
    s = LiveState("t", NODES, LINKS)
    acts = Actions()
    c = create_app(s, acts, token="tok", allowed_hosts=["lab-host.example"]).test_client()
    cut = "/api/links/km0-km1/cut"
    ok = {"X-Qkdtwin-Token": "tok"}

    def refused(r, words: str) -> bool:
        return r.status_code == 403 and words in r.get_json()["error"]

    assert refused(c.post(cut), "token")
    assert refused(c.post(cut, headers={"X-Qkdtwin-Token": "to"}), "token")
    assert refused(c.post(cut, headers={**ok, "Origin": "http://evil.example"}), "cross-site")
    assert refused(c.post(cut, headers={**ok, "Sec-Fetch-Site": "cross-site"}), "cross-site")
    assert refused(c.post(cut, headers={**ok, "Sec-Fetch-Site": "same-site"}), "cross-site")
    # a rebound DNS name cannot even read the state
    assert refused(c.get("/api/state", headers={"Host": "evil.example:8050"}), "Host")
    assert refused(c.post(cut, headers={**ok, "Host": "evil.example"}), "Host")
    assert acts.calls == []
    # the page's own requests, by loopback names or an allowed one
    assert c.post(cut, headers={**ok, "Origin": "http://localhost"}).status_code == 200
    for host in ("127.0.0.1:8050", "[::1]:8050", "LAB-HOST.example:8050"):
        assert c.get("/api/state", headers={"Host": host}).status_code == 200, host
    assert c.post(cut, headers={**ok, "Host": "lab-host.example:8050",
                                "Origin": "http://lab-host.example:8050",
                                "Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert [x[0] for x in acts.calls] == ["link", "link"]
    # without a token given, each app makes its own random one
    assert create_app(s).config["QKDTWIN_TOKEN"] != create_app(s).config["QKDTWIN_TOKEN"]


def test_interface_commands_per_runtime():
    """Cutting a link runs `ip link set` inside the node, through the lab's runtime."""
    topo = load_lab(Path(__file__).resolve().parents[2] / "labs" / "line3.clab.yml")

    def lab(runtime: str) -> DeployedLab:
        return DeployedLab(topo.name, topo.lab_dir, {"qkdtwin_runtime": runtime}, topo)

    assert lab("netns").node_argv("km0", interface_argv("eth1", False)) == [
        "ip", "netns", "exec", "clab-line3-km0", "ip", "link", "set", "dev", "eth1", "down"]
    assert lab("clab").node_argv("km0", interface_argv("eth1", True))[:3] == [
        "docker", "exec", "clab-line3-km0"]


def test_replay_of_a_recording_restores_sessions_and_events(tmp_path):
    import time

    from qkdtwin.dashboard.cli import replay_recording
    from qkdtwin.events import record_line

    now = time.time()
    d = tmp_path / "events"
    d.mkdir()
    lines = [record_line(*ev("admission", "config_request_received", "s9", ts=now - 5,
                             sae_id="a", peer_sae_id="b", api="014"), now - 5),
             record_line(*ev("admission", "path_assigned", "s9", ts=now - 4,
                             path=["km0", "km1"], links=["km0-km1"]), now - 4),
             record_line(*ev("admission", "path_assigned", "old", ts=now - 7200,
                             path=["km0", "km2"]), now - 7200)]
    (d / "20200101T000000.jsonl").write_text("\n".join(lines) + "\n")
    s = LiveState("t", NODES, LINKS)
    assert replay_recording(s, d) == 2  # older than an hour: left out
    snap = s.snapshot()
    assert [x["id"] for x in snap["sessions"]] == ["s9"]
    assert snap["sessions"][0]["path"] == ["km0", "km1"] and snap["messages"] == 0
    assert [e["kind"] for e in s.events_after(0)] == ["config_request_received",
                                                      "path_assigned"]
    assert replay_recording(s, tmp_path / "none") == 0


def test_a_session_id_used_again_after_a_refusal_is_a_new_session():
    s = LiveState("t", NODES, LINKS)
    s.feed(*ev("km0", "session_request", "p", ts=1.0, sae_id="a", peer_sae_id="b", api="014"))
    s.feed(*ev("admission", "session_rejected", "p", ts=2.0, reason="rejected: no path"))
    assert s.snapshot(now=3.0)["sessions"][0]["state"] == "rejected"
    s.feed(*ev("km0", "session_request", "p", ts=4.0, sae_id="a", peer_sae_id="b", api="014"))
    s.feed(*ev("admission", "path_assigned", "p", ts=5.0, path=["km0", "km1"]))
    (only,) = s.snapshot(now=200.0)["sessions"]  # not aged out with the refused one
    assert only["state"] == "active" and only["path"] == ["km0", "km1"] and not only["reason"]
