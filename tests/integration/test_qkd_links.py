"""QKD modules in a deployed lab (line3, deployed once per session by the `deployed_lab`
fixture of tests/support/deployed.py): both ends of every link hand out the same keys under
the same IDs through ETSI 014, at the rate the model predicts for the link, and switching
Eve on (`qkdtwin eve`) raises the published QBER and stops key production.

The key managers of the lab are the modules' SAEs and pull every key they can; the rate test
pauses them (supervisorctl stop key_manager) while it is the SAE and starts them again.

Rates: the prediction is `qkdtwin.qkd_module.predict.block_prediction` (analytic gains and
QBERs of qkdtwin.quantum.keyrate through the emulator's finite-size estimation, Cascade
leak and privacy amplification for the module's block size; docs/quantum.md). The wall-clock
rate measured through ETSI 014 is compared with that prediction times the link's
`time_scale` times the real-time factor achieved in the same window (completed blocks x
block link time / wall time): on a loaded machine a module runs slower than real time and
says so, and the test checks the key per emulated link-second, not the load.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from functools import partial

import pytest

from qkdtwin.bus import Bus
from qkdtwin.cli import main
from qkdtwin.control.cli import lab_connection
from qkdtwin.qkd_module.config import block_pulses
from qkdtwin.qkd_module.predict import block_prediction
from qkdtwin.quantum.params import LinkParams
from tests.support.waiting import wait_for as support_wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

API_BASE_PORT = 8700   # role qkd_module default: 127.0.0.1:<base + index of the link>
MIN_BLOCKS = 25        # blocks per link in the measurement (secret bits per block vary ~20 %)
MAX_WINDOW_S = 150.0   # a loaded machine emulates slower than real time: wait at most this


class Api:
    """ETSI 014 / healthz of one module, called inside its node's namespace."""

    def __init__(self, lab, node: str, port: int, peer: str, link: str) -> None:
        self.ns = lab.lab.namespace(node)
        self.node = node
        self.peer = peer
        self.base = f"http://127.0.0.1:{port}"
        # the module's API token, where the KM reads it (role qkd_module)
        self.token_file = f"{lab.hostvars(node)['qkdtwin_data_dir']}/qkd-{link}.api-token"

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        token = subprocess.run(["ip", "netns", "exec", self.ns, "cat", self.token_file],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        argv = ["ip", "netns", "exec", self.ns, "curl", "-s", "-m", "30", "-X", method,
                "-H", f"Authorization: Bearer {token}",
                "-w", "\n%{http_code}", self.base + path]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=40).stdout
        text, _, code = out.rpartition("\n")
        return int(code or 0), (json.loads(text) if text.strip() else {})

    def health(self) -> dict:
        code, h = self.call("GET", "/healthz")
        assert code == 200, f"{self.node} module {self.base}: HTTP {code}"
        return h

    def keys(self, op: str, body: dict) -> tuple[int, dict]:
        return self.call("POST", f"/api/v1/keys/{self.peer}/{op}", body)


def link_apis(lab, link: dict) -> tuple[Api, Api]:
    def port(node: str) -> int:
        ids = [lk["id"] for lk in lab.hostvars(node)["qkdtwin_node_qkd_links"]]
        return API_BASE_PORT + ids.index(link["id"])
    return (Api(lab, link["a"], port(link["a"]), link["b"], link["id"]),
            Api(lab, link["b"], port(link["b"]), link["a"], link["id"]))


# this file polls every 0.5 s
wait_for = partial(support_wait_for, step=0.5)


def drain(alice: Api) -> dict[str, bytes]:
    """Every 256-bit key Alice holds, through enc_keys."""
    out: dict[str, bytes] = {}
    code, st = alice.call("GET", f"/api/v1/keys/{alice.peer}/status")
    assert code == 200, st
    left = int(st["stored_key_count"])
    while left > 0:
        n = min(left, 1024)
        code, got = alice.keys("enc_keys", {"number": n, "size": 256})
        assert code == 200, got
        out |= {k["key_ID"]: base64.b64decode(k["key"]) for k in got["keys"]}
        left -= n
    return out


@contextlib.contextmanager
def key_managers_paused(lab):
    """Stop the KMs (the modules' usual SAEs, which pull every key) while the test is the
    SAE; start them again afterwards. Nodes without a key_manager program are left alone."""
    python = lab.all_vars["qkdtwin_python"]

    def ctl(node: str, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", lab.lab.namespace(node), python, "-m",
                               "supervisor.supervisorctl", "-c",
                               "/etc/qkdtwin/supervisord.conf", action, "key_manager"],
                              capture_output=True, text=True, timeout=60)

    stopped = [n for n in lab.nodes_with_role("km") if "stopped" in ctl(n, "stop").stdout]
    try:
        yield stopped
    finally:
        for n in stopped:
            ctl(n, "start")


def dec(bob: Api, ids: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i in range(0, len(ids), 1024):
        code, r = bob.keys("dec_keys", {"key_IDs": [{"key_ID": k} for k in ids[i:i + 1024]]})
        assert code == 200, r
        out |= {k["key_ID"]: base64.b64decode(k["key"]) for k in r["keys"]}
    return out


def blocks_done(h: dict) -> int:
    return h["blocks_ok"] + h["blocks_aborted"] + h["blocks_failed"] + h["blocks_nokey"]


def test_every_link_gives_both_ends_the_same_keys_at_the_model_rate(deployed_lab):
    with key_managers_paused(deployed_lab):
        measure_links(deployed_lab)


def measure_links(lab) -> None:
    links = lab.all_vars["qkdtwin_qkd_links"]
    assert links, "the lab has no QKD links"
    apis = {lk["id"]: link_apis(lab, lk) for lk in links}
    for a, b in apis.values():  # warmed up: connected and a few blocks done
        wait_for(lambda a=a, b=b: a.health()["status"] == b.health()["status"] == "up"
                 and a.health()["blocks_ok"] >= 3, 120, f"key on {a.node}-{b.node}")
    start = {}
    for lid, (a, b) in apis.items():
        before = drain(a)  # key made before the window
        start[lid] = (blocks_done(a.health()), time.monotonic())  # right after the drain
        assert dec(b, list(before)) == before  # taken at both ends: nothing left over
    # the key made meanwhile waits in Alice's store; enough blocks for a ~4 % statistical error
    deadline = time.monotonic() + MAX_WINDOW_S
    while time.monotonic() < deadline and any(
            blocks_done(a.health()) - start[lid][0] < MIN_BLOCKS
            for lid, (a, _) in apis.items()):
        time.sleep(2.0)
    report = []
    for lk in links:
        lid = lk["id"]
        a, b = apis[lid]
        mine = drain(a)
        h = a.health()
        done, t1 = blocks_done(h), time.monotonic()
        wall = t1 - start[lid][1]
        ids = list(mine)
        assert ids, f"{lid}: no key in {wall:.0f} s"
        # the b end hands out exactly these keys under exactly these IDs
        assert dec(b, ids) == mine
        assert len(set(mine.values())) == len(ids)
        # rate against the scaled prediction
        p = LinkParams.from_vars(lk["qkd"])
        pred = block_prediction(p)
        assert pred["block_pulses"] == block_pulses(p) == h["block_pulses"]
        blocks = done - start[lid][0]
        rtf = blocks * pred["block_link_s"] / (wall * p.time_scale)
        bits = 256 * len(ids)
        rate = bits / wall
        expected = pred["skr_bps"] * p.time_scale * rtf
        report.append(f"{lid}: {rate:.0f} bit/s measured, {expected:.0f} predicted "
                      f"({pred['skr_bps']:.0f} bit/s per link second x time_scale "
                      f"{p.time_scale:g} x real-time factor {rtf:.2f}; module reports "
                      f"{h['realtime_factor']:.2f}); {blocks} blocks, {len(ids)} keys")
        assert blocks >= MIN_BLOCKS // 2, f"{lid}: too few blocks to measure: {report[-1]}"
        assert abs(rate / expected - 1.0) <= 0.20, report[-1]
        assert 0.0 < h["realtime_factor"] <= 1.5, report[-1]  # reported, and not invented
    print("\n".join(report))


def test_eve_raises_the_published_qber_and_stops_key(deployed_lab, capsys):
    lab = deployed_lab
    link = next(lk for lk in lab.all_vars["qkdtwin_qkd_links"] if lk["id"] == "km0-km1")
    a, b = link_apis(lab, link)
    wait_for(lambda: b.health()["blocks_ok"] >= 2, 120, "key on km0-km1")
    seen: list[dict] = []
    lock = threading.Lock()

    def collect(topic, payload, msg):
        if payload.get("source") == "qkd":  # the KMs publish on the same topics
            with lock:
                seen.append(payload)

    alarms: list[dict] = []
    bus = Bus(lab_connection(str(lab.lab.path)), "host", workers=1)
    bus.subscribe("qkd/v1/telemetry/+/km0-km1", collect, qos=0)
    bus.subscribe("qkd/v1/alarm/km0-km1", lambda t, p, m: alarms.append(p))
    bus.start()
    try:
        try:
            assert main(["eve", str(lab.lab.path), "km1:km0", "--fraction", "0.5"]) == 0
            assert "intercept-resend on 50% of the pulses" in capsys.readouterr().out
            first = a.health()["eve_since_block"]  # partly attacked; every later block fully
            # published telemetry of both ends: QBER e_d + f (1/4 - e_d/2) = 0.150, above 0.11
            attacked_qber = lambda: [t for t in list(seen)  # noqa: E731
                                     if (t.get("qber_block") or -1) > first]
            for node in ("km0", "km1"):
                wait_for(lambda node=node: [t for t in attacked_qber() if t["node"] == node
                                            and t["eve_fraction"] == 0.5
                                            and (t["qber"] or 0) > 0.11], 60,
                         f"QBER above threshold published by {node}")
            high = [t["qber"] for t in attacked_qber()]
            assert all(0.12 < q < 0.18 for q in high), high
            wait_for(lambda: b.health()["current_block"] > first + 12, 120, "blocks with Eve")
            ha, hb = a.health(), b.health()
            attacked = hb["eve_since_block"]
            assert attacked in (first, first + 1)
            assert ha["last_ok_block"] <= attacked and hb["last_ok_block"] <= attacked
            # once the blocks sent before Eve came are through at both ends (Bob finishes a
            # block after Alice, and a block with key after later aborted ones), no more key
            for end in (a, b):
                wait_for(lambda end=end: (lambda h: h["oldest_open_block"] > attacked
                                          and h["pending_blocks"] == 0)(end.health()), 120,
                         f"older blocks done at {end.node}")
            made = a.health()["secret_bits_total"], b.health()["secret_bits_total"]
            wait_for(lambda: [t for t in sorted(list(seen), key=lambda t: t["ts"])[-4:]
                              if t["skr_bps"] == 0], 60, "telemetry showing no key")
            ha, hb = a.health(), b.health()
            assert (ha["secret_bits_total"], hb["secret_bits_total"]) == made
            assert ha["last_ok_block"] <= attacked and hb["last_ok_block"] <= attacked
        finally:
            main(["eve", str(lab.lab.path), "km0:km1", "--off"])
        wait_for(lambda: b.health()["last_ok_block"] > attacked, 120, "key after Eve left")
        # leave the shared lab as found: the monitoring's alarm on the link cleared
        wait_for(lambda: alarms and alarms[-1].get("kind") == "clear", 120,
                 "the km0-km1 alarm to clear")
    finally:
        bus.stop()
