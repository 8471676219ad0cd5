"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright with
executable_path; never a browser download).

1. Synthetic: a real Mosquitto on loopback; the test publishes the star6 topology, module
   and KM telemetry and a session's events as the elements would, and answers the page's
   Eve button like the control plane does (alarm, then re-route). Runs anywhere.
2. Deployed: the test session's deployed copy of labs/star6 (`deployed_star6`,
   tests/support/deployed.py); an application pair sae-4/sae-5 gets keys (path km4-km5 or
   km4-km0-km5, as routing picks), the test clicks "Eve on" for the path's first link in the
   page and waits for the alarm and the re-routed path, then switches Eve off. Takes a
   screenshot (QKDTWIN_UPDATE_DOCS_IMG=1 copies it to docs/img/dashboard.png). Needs root
   and the KM, QKD module and control-plane roles.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.dashboard.app import create_app
from qkdtwin.dashboard.cli import Server, connect_state
from qkdtwin.dashboard.state import LiveState

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                       reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="qkdtwin-chromium-")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1500, "height": 900})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def star6_static() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from qkdtwin.runtime.inventory import build_inventory
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab

    inv = build_inventory(load_lab(ROOT / "labs" / "star6.clab.yml"), get_runtime("netns"))
    v = inv["all"]["vars"]
    return v["qkdtwin_nodes"], v["qkdtwin_qkd_links"]


class ControlPlaneAnswer:
    """Actions of the synthetic test: Eve on a link -> the module's telemetry shows it, the
    monitoring element raises the alarm and admission re-routes (what the real elements do)."""

    def __init__(self, bus: Bus, sid: str) -> None:
        self.bus = bus
        self.sid = sid
        self.calls: list[tuple[str, float]] = []

    def eve(self, link: str, fraction: float) -> dict[str, Any]:
        self.calls.append((link, fraction))
        a, b = link.split("-")
        self.bus.publish(f"qkd/v1/telemetry/{a}/{link}", {
            "type": "telemetry", "source": "qkd", "node": a, "link": link, "qber": 0.16,
            "skr_bps": 0.0, "stored_bits": 4096, "eve_fraction": fraction, "status": "up"})
        self.bus.publish(f"qkd/v1/alarm/{link}", {"type": "alarm", "link": link,
                                                  "kind": "qber_high", "qber": 0.16,
                                                  "threshold": 0.11})
        self.bus.event("session_rerouted", self.sid, link=link, alarm="qber_high",
                       old_path=["km4", "km5"], path=["km4", "km0", "km5"],
                       links=["km0-km4", "km0-km5"])
        return {"link": link, "eve_fraction": fraction}

    def set_link(self, link: str, up: bool) -> dict[str, Any]:
        return {"link": link, "state": "up" if up else "down"}


def test_dashboard_synthetic_feed(page, broker, test_ca, tmp_path):
    nodes, links = star6_static()
    state = LiveState("star6", nodes, links)
    host = test_ca.issue("host", ou="operator")
    dash_bus = connect_state(state, BrokerConfig("127.0.0.1", broker.port, test_ca.ca,
                                                 host.cert, host.key))
    el = test_ca.issue("admission")
    pub = Bus(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, el.cert, el.key),
              "admission").start()
    sid = "5e55b0a1-0000-4000-8000-000000000001"
    actions = ControlPlaneAnswer(pub, sid)
    app = create_app(state, actions, dash_bus)
    server = Server(app, "127.0.0.1", 0).start()
    try:
        assert dash_bus.wait_connected(5) and pub.wait_connected(5)
        time.sleep(0.3)
        for lk in links:
            pub.publish(f"qkd/v1/telemetry/{lk['a']}/{lk['id']}", {
                "type": "telemetry", "source": "qkd", "node": lk["a"], "link": lk["id"],
                "qber": 0.031, "skr_bps": 5200.0, "stored_bits": 81920, "eve_fraction": 0.0,
                "status": "up"})
            pub.publish(f"qkd/v1/telemetry/{lk['b']}/{lk['id']}", {
                "type": "telemetry", "source": "km", "node": lk["b"], "link": lk["id"],
                "pool_bits": 65536, "sessions": 0})
        pub.event("config_request_received", sid, km="km4", sae_id="sae-4",
                  peer_sae_id="sae-5", api="014")
        pub.event("session_accepted", sid, km="km4", user="iot", api="014")
        pub.event("path_assigned", sid, path=["km4", "km5"], links=["km4-km5"])
        pub.event("session_active", sid, path=["km4", "km5"], timeout_s=60)

        page.goto(f"http://127.0.0.1:{server.port}/?token={app.config['QKDTWIN_TOKEN']}")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        # the topology: six KMs and six QKD links drawn by cytoscape, all up
        page.wait_for_function("document.querySelectorAll('#links tbody tr').length == 6")
        drawn = page.evaluate("[cy_nodes(), cy_edges()]".replace(
            "cy_nodes()", "document.querySelector('#graph canvas') !== null").replace(
            "cy_edges()", "document.querySelectorAll('#links tbody tr .st-up').length"))
        assert drawn == [True, 6]
        page.wait_for_selector(f"#sessions tr[data-session='{sid}'] td.path:text('km4-km5')")

        # Eve on km4-km5 through the page: the alarm shows and the path changes
        page.click("#links tr[data-link='km4-km5'] button[data-action='eve-on']")
        page.wait_for_selector("#links tr[data-link='km4-km5'] .st-alarm", timeout=10000)
        page.wait_for_selector(
            f"#sessions tr[data-session='{sid}'] td.path:text('km4-km0-km5')", timeout=10000)
        page.wait_for_selector("#events li[data-kind='alarm_qber_high']", timeout=10000)
        page.wait_for_selector("#events li[data-kind='operator_eve']", timeout=10000)
        assert actions.calls == [("km4-km5", 0.5)]
        page.click(f"#sessions tr[data-session='{sid}']")  # highlight the path
        # filters: links in alarm only, then only the selected session's path
        visible = ("[document.querySelectorAll('#links tbody tr').length, "
                   "window.qkdtwinGraph.edges().filter((e) => e.visible()).length, "
                   "window.qkdtwinGraph.nodes().filter((n) => n.visible()).length]")
        page.select_option("#linkfilter", "alarm")
        page.wait_for_function("document.querySelectorAll('#links tbody tr').length == 1")
        assert page.evaluate(visible) == [1, 1, 6]
        assert page.locator("#links tbody tr").get_attribute("data-link") == "km4-km5"
        page.select_option("#linkfilter", "all")
        page.check("#pathonly")
        page.wait_for_function("document.querySelectorAll('#links tbody tr').length == 2")
        assert page.evaluate(visible) == [2, 2, 3]  # km4-km0-km5
        page.uncheck("#pathonly")
        page.wait_for_function("document.querySelectorAll('#links tbody tr').length == 6")
        time.sleep(1.2)
        page.screenshot(path=str(tmp_path / "dashboard-synthetic.png"))
        if os.environ.get("QKDTWIN_KEEP_SCREENSHOT"):
            shutil.copy(tmp_path / "dashboard-synthetic.png", os.environ["QKDTWIN_KEEP_SCREENSHOT"])
        assert (tmp_path / "dashboard-synthetic.png").stat().st_size > 20_000
    finally:
        server.stop()
        dash_bus.stop()
        pub.stop()


def test_a_generated_50_node_lab_is_drawn_at_its_coordinates(page, broker, test_ca, tmp_path):
    """A lab from `qkdtwin generate geometric --nodes 50`: the page draws every KM at its
    place (north up), every link, and the links table lists them all."""
    from qkdtwin.runtime.inventory import build_inventory
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab
    from qkdtwin.topology.generate import Spec, generate

    lab = load_lab(generate(Spec("geometric", nodes=50, area_km=150, seed=2), tmp_path)[0])
    v = build_inventory(lab, get_runtime("netns"))["all"]["vars"]
    nodes, links = v["qkdtwin_nodes"], v["qkdtwin_qkd_links"]
    state = LiveState(lab.name, nodes, links)
    host = test_ca.issue("host", ou="operator")
    dash_bus = connect_state(state, BrokerConfig("127.0.0.1", broker.port, test_ca.ca,
                                                 host.cert, host.key))
    app = create_app(state, RecordedActions(), dash_bus)
    server = Server(app, "127.0.0.1", 0).start()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/?token={app.config['QKDTWIN_TOKEN']}")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        page.wait_for_function(f"document.querySelectorAll('#links tbody tr').length == "
                               f"{len(links)}")
        assert page.evaluate("document.body.dataset.layout") == "coordinates"
        drawn = page.evaluate("Object.fromEntries(window.qkdtwinGraph.nodes().map("
                              "(n) => [n.id(), [n.position('x'), n.position('y')]]))")
        assert len(drawn) == 50
        assert page.evaluate("window.qkdtwinGraph.edges().length") == len(links)
        # drawn where the lab puts them: the same order east-west, reversed north-south,
        # and one scale for every node
        placed = {n: nodes[n]["pos"] for n in drawn}
        west = min(placed, key=lambda n: placed[n][0])
        east = max(placed, key=lambda n: placed[n][0])
        north = max(placed, key=lambda n: placed[n][1])
        assert drawn[west][0] < drawn[east][0] and drawn[north][1] == min(
            p[1] for p in drawn.values())
        scale = (drawn[east][0] - drawn[west][0]) / (placed[east][0] - placed[west][0])
        for n, (x, y) in drawn.items():
            assert x - drawn[west][0] == pytest.approx(scale * (placed[n][0] - placed[west][0]),
                                                       abs=1.0)
            assert y - drawn[north][1] == pytest.approx(
                scale * (placed[north][1] - placed[n][1]), abs=1.0)
        page.screenshot(path=str(tmp_path / "dashboard-50.png"))
        if os.environ.get("QKDTWIN_UPDATE_DOCS_IMG"):
            shutil.copy(tmp_path / "dashboard-50.png", ROOT / "docs" / "img" / "dashboard-50.png")
        assert (tmp_path / "dashboard-50.png").stat().st_size > 20_000
    finally:
        server.stop()
        dash_bus.stop()


class RecordedActions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def eve(self, link: str, fraction: float) -> dict[str, Any]:
        self.calls.append(("eve", link))
        return {"link": link, "eve_fraction": fraction}

    def set_link(self, link: str, up: bool) -> dict[str, Any]:
        self.calls.append(("up" if up else "cut", link))
        return {"link": link, "state": "up" if up else "down"}


EVIL_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="{dash}/api/links/km4-km5/cut" target="sink"></form>
<script>
  fetch("{dash}/api/links/km0-km1/cut", {{method: "POST", mode: "no-cors"}});
  fetch("{dash}/api/links/km0-km2/eve", {{method: "POST", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}}, body: '{{"fraction": 0.5}}'}});
  document.getElementById("f").submit();
</script></body></html>"""


def test_cross_site_page_cannot_drive_the_controls(page, tmp_path):
    """Issue 13, M8: a page of another origin that the operator visits (served on
    127.0.0.2) posts a form and two no-cors fetches to the dashboard's controls: all are
    refused and nothing is cut; the dashboard's own page, opened with the token it printed,
    still cuts a link from the same browser."""
    import functools
    import http.server
    import threading

    nodes, links = star6_static()
    actions = RecordedActions()
    app = create_app(LiveState("star6", nodes, links), actions)
    server = Server(app, "127.0.0.1", 0).start()
    dash = f"http://127.0.0.1:{server.port}"
    (tmp_path / "evil.html").write_text(EVIL_PAGE.format(dash=dash))
    evil = http.server.ThreadingHTTPServer(
        ("127.0.0.2", 0), functools.partial(http.server.SimpleHTTPRequestHandler,
                                            directory=str(tmp_path)))
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.url, r.status))
            if "/api/links/" in r.url else None)
    try:
        page.goto(f"http://127.0.0.2:{evil.server_address[1]}/evil.html")
        deadline = time.time() + 15
        while len(answers) < 3 and time.time() < deadline:
            page.wait_for_timeout(200)
        assert actions.calls == [], actions.calls
        assert sorted(answers) == sorted([(f"{dash}/api/links/km4-km5/cut", 403),
                                          (f"{dash}/api/links/km0-km1/cut", 403),
                                          (f"{dash}/api/links/km0-km2/eve", 403)]), answers
        # the same browser on the dashboard's own page, opened with its token, may act
        page.goto(f"{dash}/?token={app.config['QKDTWIN_TOKEN']}")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        page.click("#links tr[data-link='km4-km5'] button[data-action='cut']")
        deadline = time.time() + 10
        while not actions.calls and time.time() < deadline:
            page.wait_for_timeout(100)
        assert actions.calls == [("cut", "km4-km5")]
    finally:
        evil.shutdown()
        server.stop()


# --- on a deployed lab ----------------------------------------------------------------------

def _lab_roles_ready() -> str | None:
    site = (ROOT / "playbooks" / "site.yml").read_text()
    missing = [r for r in ("key_manager", "qkd_module", "admission_control", "monitoring")
               if f"role: {r}" not in site]
    return f"site.yml does not deploy {', '.join(missing)} yet" if missing else None


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(_lab_roles_ready() is not None, reason=str(_lab_roles_ready()))
def test_dashboard_on_deployed_star6(page, deployed_star6, tmp_path):
    from qkdtwin.cli import main
    from qkdtwin.dashboard.cli import build
    from qkdtwin.key_manager.sessions import session_id_014
    from qkdtwin.labops.lab import DeployedLab
    from qkdtwin.sae.client import SaeClient

    lab = deployed_star6.lab
    sid = session_id_014("sae-4", "sae-5")
    eve_link = None
    try:
        dl = DeployedLab.load(lab.path)
        cert, key = dl.sae_identity("sae-4")
        master = SaeClient(dl.km_url("km4"), cert, key, dl.ca, timeout=60)
        cert5, key5 = dl.sae_identity("sae-5")
        slave = SaeClient(dl.km_url("km5"), cert5, key5, dl.ca, timeout=60)
        # the first key may wait for the QKD links to produce: retry for up to 3 minutes
        deadline = time.time() + 180
        while True:
            r = master.enc_keys("sae-5", number=1, size=256)
            if r.ok or time.time() > deadline:
                break
            time.sleep(2)
        assert r.ok, r.body
        got = slave.dec_keys("sae-4", [r.keys()[0]["key_ID"]])
        assert got.ok and got.keys() == r.keys()
        # the CLI against the deployed lab: KM and certificate found from the lab's files
        assert main(["sae", str(lab.path), "--sae", "sae-4", "--compact", "status",
                     "--slave", "sae-5"]) == 0

        state, actions, bus = build(str(lab.path))  # replays the recording: knows the session
        from qkdtwin.dashboard.app import create_app
        app = create_app(state, actions, bus)
        server = Server(app, "127.0.0.1", 0).start()
        try:
            page.goto(f"http://127.0.0.1:{server.port}/?token={app.config['QKDTWIN_TOKEN']}")
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            page.wait_for_function("document.querySelectorAll('#links tbody tr').length == 6")
            page.wait_for_selector("#links tbody .st-up", timeout=60000)
            # the session's path as routing chose it (direct, or through km0)
            row = f"#sessions tr[data-session='{sid}']"
            cell = page.wait_for_selector(f"{row} td.path", timeout=30000)
            old_path = cell.inner_text().split()[0].split("-")
            assert old_path[0] == "km4" and old_path[-1] == "km5", old_path
            first = "-".join(sorted(old_path[:2], key=lambda n: int(n[2:])))  # link id a-b
            eve_link = first
            page.click(f"#links tr[data-link='{first}'] button[data-action='eve-on']")
            page.wait_for_selector(f"#links tr[data-link='{first}'] .st-alarm", timeout=90000)
            page.wait_for_function(
                """([old]) => [...document.querySelectorAll('#sessions tr td.path')].some(
                     td => td.textContent.includes('was ' + old))""",
                arg=["-".join(old_path)], timeout=90000)
            new_path = page.locator(f"{row} td.path").first.inner_text().split()[0].split("-")
            assert new_path != old_path and new_path[0] == "km4" and new_path[-1] == "km5"
            assert first not in {"-".join(sorted(p, key=lambda n: int(n[2:])))
                                 for p in zip(new_path, new_path[1:], strict=False)}
            # keys keep flowing on the new path
            r2 = master.enc_keys("sae-5", number=1, size=256)
            assert r2.ok, r2.body
            assert slave.dec_keys("sae-4", [r2.keys()[0]["key_ID"]]).keys() == r2.keys()
            page.click(row)  # highlight the new path
            time.sleep(1.5)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000
            if os.environ.get("QKDTWIN_UPDATE_DOCS_IMG"):  # docs/img/dashboard.png
                shutil.copy(shot, ROOT / "docs" / "img" / "dashboard.png")
        finally:
            server.stop()
            bus.stop()
    finally:
        if eve_link:  # leave the shared lab as found (the ETSI 014 session times out)
            assert main(["eve", str(lab.path), eve_link.replace("-", ":"), "--off"]) == 0


def test_timeline_html_runs_in_chromium(page, tmp_path):
    """The timeline page draws every recorded marker, offline, and its filters work."""
    from qkdtwin.events import build_timeline, load_events
    from qkdtwin.timeline import render_html

    tl = build_timeline(load_events(ROOT / "tests" / "data" / "events" / "line3-paper.jsonl"))
    html = render_html(tl, tmp_path / "timeline.html", "line3")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(html.as_uri())
    page.wait_for_selector("svg circle")
    assert page.locator("svg circle").count() == len(tl.markers)
    assert page.locator("#sessions tbody tr").count() == len(tl.sessions)
    page.click("#legend .chip[data-cat='relay']")  # hide the relay markers
    relays = sum(1 for m in tl.markers if m.category == "relay")
    assert page.locator("svg circle").count() == len(tl.markers) - relays
    assert errors == []
