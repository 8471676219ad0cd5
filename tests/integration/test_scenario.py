"""Scenarios on the session's deployed copy of labs/star6 (`deployed_star6`,
tests/support/deployed.py): `qkdtwin demo --no-deploy` runs scenarios/paper-fig4.yml (three
pairs in parallel, km2-km3 relayed through km0, identical keys at both applications,
timeline files, timings); then the fault scenarios: a link cut during a session
(link-cut.yml) and a KM killed on the relay node, Eve on a link and a refused application
(faults-mix.yml).

(`qkdtwin demo` with its deploy step is what `make demo` runs: tests/integration/test_deploy.py
covers the deploy.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"


@pytest.fixture(scope="module")
def demo(deployed_star6, tmp_path_factory):
    """`qkdtwin demo --no-deploy` on the session's deployed star6 (tests/support/deployed.py):
    (lab, exit code, output lines, results)."""
    from qkdtwin.demo import run_demo

    lab = deployed_star6.lab
    d = tmp_path_factory.mktemp("scenario")
    lines: list[str] = []
    results = d / "demo.json"
    rc = run_demo(str(lab.path), deploy_lab=False, results=results, log=lines.append)
    (d / "demo.log").write_text("\n".join(lines) + "\n")  # to read after the run
    return lab, rc, lines, json.loads(results.read_text()) if results.exists() else None


def test_demo_runs_paper_fig4(demo):
    lab, rc, lines, results = demo
    text = "\n".join(lines)
    assert rc == 0, text[-6000:]
    # progress all the way: the steps, the scenario's pair lines
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert any(line.startswith(step) for line in lines), step
    assert "pairs: 3/3 with identical keys at both applications (12 keys)" in text
    assert "path km2-km0-km3 (relayed through km0)" in text
    assert "dashboard:" in text and "tear down:" in text and "make down LAB=" in text
    pairs = {p["name"]: p for p in results["pairs"]}
    assert set(pairs) == {"km0-km1", "km2-km3", "km4-km5"}
    assert all(p["passed"] and p["keys_matched"] == 4 for p in pairs.values()), pairs
    assert pairs["km0-km1"]["path"] == ["km0", "km1"]
    assert pairs["km2-km3"]["path"] == ["km2", "km0", "km3"]
    assert pairs["km4-km5"]["path"][0] == "km4" and pairs["km4-km5"]["path"][-1] == "km5"
    first = [p["first_key_after_demo_start_s"] for p in pairs.values()]
    assert results["first_key_on_every_pair_after_demo_start_s"] == max(first)
    assert results["deploy_s"] is None  # --no-deploy
    assert any("using the deployed lab" in line for line in lines)
    # the paper's experiment, once the links have key, finishes well under a minute
    assert results["scenario_s"] < 60, results
    png = lab.lab_dir / "timeline" / "timeline.png"
    page = lab.lab_dir / "timeline" / "timeline.html"
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert "relay_send" in html and "keys_delivered" in html


def test_scenario_cli_json(demo, capsys):
    """`qkdtwin scenario LAB FILE --json`: the result on stdout, progress on stderr, exit 0."""
    from qkdtwin.cli import main

    lab, rc, _, _ = demo
    assert rc == 0
    code = main(["scenario", str(lab.path), str(SCENARIOS / "paper-fig4.yml"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["ok"] and len(result["pairs"]) == 3
    for p in result["pairs"]:
        assert p["keys_matched"] == 4 and p["mismatches"] == 0 and p["state"] == "ok"
        assert p["latency_p50_s"] is not None and p["latency_p95_s"] >= p["latency_p50_s"]
    assert "first key after" in err


def _ifstate(lab, node: str, ifname: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", lab.namespace(node), "ip", "-o", "link", "show",
                        ifname], capture_output=True, text=True, check=True)
    flags = r.stdout.split("<", 1)[1].split(">", 1)[0].split(",")
    return "UP" if "UP" in flags else "DOWN"


def test_link_cut_during_session(demo):
    """km4-km5 cut while sae-4/sae-5 take a key every 1.5 s: every key still identical, the
    monitoring saw the link go down, the session runs off that link, the link comes back."""
    from qkdtwin.events import load_events
    from qkdtwin.scenario import cli as scenario_cli

    lab, rc, _, _ = demo
    assert rc == 0
    lines: list[str] = []
    result = scenario_cli.run(str(lab.path), SCENARIOS / "link-cut.yml", log=lines.append)
    text = "\n".join(lines)
    assert result.ok, text
    pair = {p.name: p for p in result.pairs}["km4-km5"]
    assert pair.keys_matched == 12 and pair.mismatches == 0
    assert [f.ok for f in result.faults] == [True, True]
    # the cut was real: the monitoring element raised link_down for km4-km5 after it
    cut_at = result.started + result.faults[0].applied_s
    alarms = [e for e in load_events(lab.lab_dir / "events")
              if e.ts >= cut_at and e.kind == "alarm_link_down"
              and e.payload.get("link") == "km4-km5"]
    assert alarms, "no link_down alarm recorded for km4-km5"
    # while cut, the session used km4-km0-km5 (re-routed, or routed there from the start)
    assert ["km4", "km0", "km5"] in pair.paths, pair.paths
    # restored at the end
    assert _ifstate(lab, "km4", "eth2") == "UP" and _ifstate(lab, "km5", "eth2") == "UP"
    assert pair.first_key_s is not None and len(pair.latencies) == 12


def test_faults_mix_kill_eve_refusal(demo):
    """Eve on km4-km5 during an ETSI 004 stream, then km0's KM killed during a relayed ETSI
    014 session (supervisord restarts it), and a disabled user's application refused."""
    from qkdtwin.scenario import cli as scenario_cli

    lab, rc, _, _ = demo
    assert rc == 0
    lines: list[str] = []
    result = scenario_cli.run(str(lab.path), SCENARIOS / "faults-mix.yml", log=lines.append)
    text = "\n".join(lines)
    assert result.ok, text
    pairs = {p.name: p for p in result.pairs}
    relay, eve_pair = pairs["relay-km0-restart"], pairs["km4-km5-eve"]
    assert relay.keys_matched == 10 and relay.path == ["km2", "km0", "km3"]
    assert relay.start >= eve_pair.end  # `after`
    assert eve_pair.keys_matched == 6 and eve_pair.api == "004"
    assert pairs["mallory"].state == "refused" and pairs["mallory"].keys_matched == 0
    eve_on, eve_off, kill = result.faults
    assert kill.ok and eve_on.ok and eve_off.ok
    assert eve_on.detail["eve_fraction"] == 0.5 and eve_off.detail["eve_fraction"] == 0.0
    assert relay.start <= kill.applied_s <= relay.end  # the kill hit the running relay
    assert kill.detail["running_again_s"] > 0
    # supervisord restarted the killed KM: it runs again, with a new pid
    from qkdtwin.labops.lab import DeployedLab
    from qkdtwin.labops.nodes import SUPERVISOR_CONF

    python = DeployedLab.load(lab.path).vars["qkdtwin_python"]
    r = subprocess.run(["ip", "netns", "exec", lab.namespace("km0"), python, "-m",
                        "supervisor.supervisorctl", "-c", SUPERVISOR_CONF, "status",
                        "key_manager"], capture_output=True, text=True)
    assert "RUNNING" in r.stdout, r.stdout + r.stderr
