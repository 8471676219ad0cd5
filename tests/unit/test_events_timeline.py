"""Recorded events -> timeline model -> PNG and HTML, from a real recording
(tests/data/events/line3-paper.jsonl, made by tests/data/events/record_line3.py), and the
recorder itself against a real broker."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.cli import main
from qkdtwin.errors import UserError
from qkdtwin.events import (
    build_timeline,
    categorize,
    key_available_events,
    load_events,
    parse_line,
    record_line,
)
from qkdtwin.recorder import Recorder
from qkdtwin.timeline import render_html, render_png

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "events" / "line3-paper.jsonl"


def test_recording_loads_into_lanes_and_figure4_categories():
    events = load_events(DATA)
    assert len(events) > 40
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    tl = build_timeline(events)
    assert tl.lanes == ["km0", "km1", "km2"]
    cats = {m.category for m in tl.markers}
    assert {"request", "auth", "config", "relay", "response", "end"} <= cats
    # every session starts with its request, the response comes after the configuration
    for sid in tl.sessions:
        ms = [m for m in tl.markers if m.session_id == sid]
        assert ms[0].category == "request", ms[0]
        first_cfg = min(m.t for m in ms if m.category == "config")
        first_resp = min(m.t for m in ms if m.category == "response")
        assert first_cfg < first_resp
    # the relayed 014 pair: path rebuilt from the KMs' next hops, keys counted once
    relayed = [s for s in tl.sessions.values() if s["saes"] == ["sae-a0", "sae-a2"]]
    assert relayed and relayed[0]["path"] == ["km0", "km1", "km2"] and relayed[0]["keys"] == 2
    transit = [m for m in tl.markers if m.lane == "km1" and m.kind == "relay_forward"]
    assert transit


def test_session_and_window_filters():
    events = load_events(DATA)
    tl = build_timeline(events)
    sid = next(iter(tl.sessions))
    one = build_timeline(events, sessions=[sid])
    assert set(one.sessions) == {sid}
    assert all(m.session_id in (sid, None) for m in one.markers)
    late = build_timeline(events, since=events[-1].ts - 0.05)
    assert len(late.markers) < len(tl.markers)
    with pytest.raises(UserError, match="no recorded events"):
        build_timeline(events, since=events[-1].ts + 10)
    kms = build_timeline(events, elements=["km0", "km2"])
    assert kms.lanes == ["km0", "km2"] and all(m.lane != "km1" for m in kms.markers)


def test_png_and_html_are_written(tmp_path):
    tl = build_timeline(load_events(DATA))
    png = render_png(tl, tmp_path / "t.png", "line3")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    page = render_html(tl, tmp_path / "t.html", "line3 <timeline>").read_text()
    assert "line3 &lt;timeline&gt;" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script src" not in page  # self-contained
    blob = page.split('id="data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(blob)
    assert data["lanes"] == tl.lanes and len(data["markers"]) == len(tl.markers)


def test_cli_timeline_from_events_and_bad_input(tmp_path, capsys):
    d = tmp_path / "events"
    d.mkdir()
    shutil.copy(DATA, d / "run.jsonl")
    with (d / "run.jsonl").open("a") as fh:
        fh.write("not json\n{\"x\": 1}\n\n")  # junk lines are skipped
    assert main(["timeline", "-", "--events", str(d), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "relay hop" in out and "path km0-km1-km2" in out
    assert (tmp_path / "out" / "timeline.png").is_file()
    assert (tmp_path / "out" / "timeline.html").is_file()
    table = (tmp_path / "out" / "timeline.md").read_text().splitlines()
    assert table[2] == "| t (ms) | element | event | details |"
    assert table[4].startswith("| 0 | km0 | `session_request` |")
    assert any("`relay_forward`" in row and "| km1 |" in row for row in table)
    # an older run in the same dir is left out unless --all-runs
    old = [json.loads(x) for x in DATA.read_text().splitlines()]
    for rec in old:
        rec["payload"]["ts"] -= 86400
    (d / "20000101T000000.jsonl").write_text("\n".join(json.dumps(x) for x in old) + "\n")
    assert main(["timeline", "-", "--events", str(d), "--out", str(tmp_path / "o2")]) == 0
    assert "over 1.2" in capsys.readouterr().out
    assert main(["timeline", "-", "--events", str(d), "--out", str(tmp_path / "o3"),
                 "--all-runs"]) == 0
    assert "over 864" in capsys.readouterr().out
    assert main(["timeline", "-", "--events", str(tmp_path / "nope"), "--out",
                 str(tmp_path)]) == 2
    assert "no recorded events at" in capsys.readouterr().err
    assert main(["timeline", "-", "--out", str(tmp_path)]) == 2
    assert "name a LAB or give --events" in capsys.readouterr().err


def test_parse_line_and_categories():
    assert parse_line("") is None and parse_line("[1]") is None and parse_line("{bad") is None
    ev = parse_line(record_line("qkd/v1/alarm/km0-km1",
                                {"type": "alarm", "link": "km0-km1", "kind": "qber_high",
                                 "ts": 5.0}, 6.0))
    assert ev is not None and ev.ts == 5.0 and ev.rx_ts == 6.0
    assert ev.category == "alarm" and ev.element == "monitor" and ev.kind == "alarm_qber_high"
    mod = parse_line(json.dumps({"type": "event", "ts": 1, "element": "km0", "kind": "block_done",
                                 "source": "qkd:km0-km1"}))
    assert mod is not None and mod.lane == "km0" and categorize(mod) == "qkd_key"


def test_key_available_from_telemetry():
    def tel(ts, bits, src="km"):
        return parse_line(record_line("qkd/v1/telemetry/km0/km0-km1", {
            "type": "telemetry", "source": src, "node": "km0", "link": "km0-km1",
            "pool_bits" if src == "km" else "stored_bits": bits, "ts": ts}, ts))
    evs = [tel(1, 0), tel(2, 0), tel(3, 512), tel(4, 1024), tel(5, 0), tel(6, 256),
           tel(2.5, 999, src="qkd")]  # the module's store is ignored when the KM reports
    got = key_available_events(evs)
    assert [e.ts for e in got] == [3, 6]
    assert all(e.category == "qkd_key" and e.lane == "km0" for e in got)


def test_recorder_writes_events_alarms_topology_and_telemetry(tmp_path, broker, test_ca):
    host = test_ca.issue("host", ou="operator")
    cfg = BrokerConfig("127.0.0.1", broker.port, test_ca.ca, host.cert, host.key)
    rec = Recorder(cfg, tmp_path / "events", telemetry=True).start()
    pub_id = test_ca.issue("km0")
    pub = Bus(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, pub_id.cert, pub_id.key),
              "km0").start()
    try:
        assert rec.bus.wait_connected(5) and pub.wait_connected(5)
        time.sleep(0.3)
        for i in range(20):
            pub.event("step", f"s{i % 2}", n=i)
        pub.publish("qkd/v1/alarm/km0-km1", {"type": "alarm", "link": "km0-km1",
                                             "kind": "link_down"})
        pub.publish("qkd/v1/topology", {"type": "topology", "nodes": [], "links": []})
        pub.publish("qkd/v1/telemetry/km0/km0-km1", {"type": "telemetry", "source": "km",
                                                      "node": "km0", "link": "km0-km1",
                                                      "pool_bits": 8})
        deadline = time.time() + 5
        while time.time() < deadline and rec.events.lines < 22:
            time.sleep(0.05)
    finally:
        pub.stop()
        rec.stop()
    evs = load_events(rec.path, channels=None)
    assert [e.payload["n"] for e in evs if e.kind == "step"] == list(range(20))  # in order
    assert {e.channel for e in evs} == {"events", "alarm", "topology"}
    tel = load_events(tmp_path / "events" / "telemetry", channels=None)
    assert len(tel) == 1 and tel[0].payload["pool_bits"] == 8


def test_record_cli_on_a_lab_dir(tmp_path, broker, test_ca, monkeypatch, capsys):
    """`qkdtwin record LAB` finds the broker and the host identity from the lab's files."""
    import threading

    import yaml

    from qkdtwin.runtime.inventory import write_inventory
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "labs").mkdir()
    for f in ("line3.clab.yml", "line3.users.yml"):
        shutil.copy(root / "labs" / f, tmp_path / "labs" / f)
    lab = load_lab(tmp_path / "labs" / "line3.clab.yml")
    inv = write_inventory(lab, get_runtime("netns"))
    data = yaml.safe_load(inv.read_text())
    data["all"]["vars"]["qkdtwin_broker"] = {"host": "127.0.0.1", "port": broker.port}
    inv.write_text(yaml.safe_dump(data))
    pki = lab.lab_dir / "pki"
    pki.mkdir()
    host = test_ca.issue("host", ou="operator")
    shutil.copy(test_ca.ca, pki / "ca.crt")
    shutil.copy(host.cert, pki / "host.crt")
    shutil.copy(host.key, pki / "host.key")
    monkeypatch.chdir(tmp_path)

    pub_id = test_ca.issue("km1")
    pub = Bus(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, pub_id.cert, pub_id.key),
              "km1").start()

    def publish_later() -> None:
        # once the recorder has made its file (then connects and subscribes), publish
        deadline = time.time() + 10
        while time.time() < deadline and not list((lab.lab_dir / "events").glob("*.jsonl")):
            time.sleep(0.05)
        time.sleep(1.0)
        for i in range(3):
            pub.event("relay_send", "s1", to_km="km2", n=i)

    t = threading.Thread(target=publish_later)
    t.start()
    try:
        assert main(["record", "line3", "--duration", "4"]) == 0
    finally:
        t.join()
        pub.stop()
    err = capsys.readouterr().err
    assert "3 messages recorded" in err
    evs = load_events(lab.lab_dir / "events")
    assert [e.payload["n"] for e in evs] == [0, 1, 2] and evs[0].category == "relay"
    # a lab that is not deployed: one clear line
    shutil.rmtree(lab.lab_dir)
    assert main(["record", "line3"]) == 2
    assert "is not deployed" in capsys.readouterr().err
