"""Finding H1 on a deployed line3 lab (fixture `deployed_lab`: km0 – km1 – km2): slow and idle
clients held against km1 must not stall its HTTPS server.

The attack comes from two other hosts of the lab (the `ctl` and `broker` namespaces), each a
single asyncio process (tests/support/slow_clients.py): 100 idle TCP connections, 25
slow-loris clients (TLS without a certificate, one header line a second) and 25 handshakes
that never finish, i.e. 200 + 50 + 50 in all, reopened whenever km1 closes one. Meanwhile:

- a legitimate application on km1 (sae-a1, slave sae-a0) calls ETSI 014 ``status`` and
  ``enc_keys`` in turn, a new TLS connection every 20th call, from ``SETTLE_S`` after every
  attacker connection was in place: p99 of each under 200 ms (the issue's threshold; an
  ``enc_keys`` answered 503 "retry later" when km1 runs short of link key counts as an
  answer);
- a relayed session km2 -> km0 (sae-a2 -> sae-a0, through km1) gets more keys than a KM
  prefetches (so some must be relayed through km1 during the attack), and sae-a0 decrypts
  them at km0.

The sessions opened here are closed at the end as their KM would (`close_request`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from qkdtwin.bus import admission_in
from qkdtwin.key_manager.sessions import session_id_014
from qkdtwin.labops.lab import DeployedLab as SaeLab
from qkdtwin.sae.client import SaeClient, SaeError
from tests.support.lab_events import LabEvents
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ATTACKERS = {"ctl": {"idle": 100, "loris": 25, "stuck": 25},
             "broker": {"idle": 100, "loris": 25, "stuck": 25}}
ATTACK_S = 120.0       # the attackers stop by themselves after this
SAMPLES = 300          # of each call of the legitimate application (p99: the 4th worst)
SETTLE_S = 3.0         # after the attack is in place, before measuring
P99_LIMIT_S = 0.200    # the threshold
RELAYED_KEYS = 96      # > prefetch_keys (64): some are relayed during the attack
# link key km1 must hold on km0-km1 before measuring: pads for every key asked for here and
# the prefetch, twice over, so that no answer waits for the QKD link (that is not H1's subject)
NEED_LINK_BITS = 2 * (SAMPLES + RELAYED_KEYS + 2 * 64) * 256
PAIRS = (("sae-a1", "sae-a0"), ("sae-a2", "sae-a0"))  # (master, slave) opened here


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def _retry_later(r) -> bool:
    return r.http == 503 and "token bucket" not in r.message


@pytest.fixture(scope="module")
def lab(deployed_lab):
    sae_lab = SaeLab.load(deployed_lab.lab.path)
    events = LabEvents(sae_lab).start()
    clients: dict[str, SaeClient] = {}

    def client(sae: str, timeout: float = 30.0) -> SaeClient:
        cert, key = sae_lab.sae_identity(sae)
        c = SaeClient(sae_lab.km_url(sae_lab.sae_km(sae)), cert, key, sae_lab.ca, sae_id=sae,
                      timeout=timeout)
        clients[sae] = c
        return c

    yield deployed_lab, sae_lab, client
    for master, slave in PAIRS:
        events.bus.publish(admission_in(sae_lab.sae_km(master)), {
            "type": "close_request", "km": sae_lab.sae_km(master),
            "session_id": session_id_014(master, slave), "reason": "closed"})
    time.sleep(1.0)  # let the broker deliver them before the bus goes
    events.stop()
    for c in clients.values():
        c.close_connection()


class Attackers:
    def __init__(self, deployed, target: str) -> None:
        host, port = urlsplit(target).hostname, urlsplit(target).port or 8443
        self.procs = {}
        self.ready: dict[str, threading.Event] = {}
        self.out: dict[str, list[str]] = {}
        for node, counts in ATTACKERS.items():
            argv = ["ip", "netns", "exec", deployed.lab.namespace(node), sys.executable,
                    str(ROOT / "tests" / "support" / "slow_clients.py"), host, str(port),
                    "--seconds", str(ATTACK_S)]
            for kind, n in counts.items():
                argv += [f"--{kind}", str(n)]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            self.procs[node], self.ready[node], self.out[node] = proc, threading.Event(), []
            threading.Thread(target=self._read, args=(node,), daemon=True).start()

    def _read(self, node: str) -> None:
        for line in self.procs[node].stdout:
            self.out[node].append(line.strip())
            if line.strip() == "ready":
                self.ready[node].set()

    def wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        return all(ev.wait(max(0.0, end - time.monotonic())) for ev in self.ready.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _relayed(client: SaeClient, out: dict) -> None:
    """sae-a2 -> sae-a0 through km1: RELAYED_KEYS keys, 8 a call, retrying "later"."""
    try:
        _relay_keys(client, out)
    except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
        out["errors"].append(repr(exc))


def _relay_keys(client: SaeClient, out: dict) -> None:
    deadline = time.monotonic() + 90
    while len(out["keys"]) < RELAYED_KEYS and time.monotonic() < deadline:
        try:
            r = client.enc_keys("sae-a0", number=8)
        except SaeError as exc:
            out["errors"].append(str(exc))
            continue
        if r.ok:
            out["keys"].extend(r.keys())
        elif _retry_later(r):
            time.sleep(0.5)
        else:
            out["errors"].append(f"HTTP {r.http}: {r.message}")
            time.sleep(0.5)


def test_slow_clients_do_not_stall_a_km(lab):
    deployed, sae_lab, client = lab
    app = client("sae-a1", timeout=5.0)    # the legitimate application on km1
    relay_src = client("sae-a2")            # on km2, relaying through km1 to km0
    slave = client("sae-a0")                # on km0
    wait_for(lambda: app.status("sae-a0").ok, 120, "km1 answers sae-a1's status")
    wait_for(lambda: relay_src.status("sae-a0").ok, 120, "km2 answers sae-a2's status")

    cert = tuple(str(p) for p in sae_lab.host_identity())

    def km1_link_bits() -> int:
        h = requests.get(f"{sae_lab.km_url('km1')}/healthz", cert=cert, verify=str(sae_lab.ca),
                         timeout=10).json()
        return h["links"]["km0-km1"]["pool_bits"]
    wait_for(lambda: km1_link_bits() >= NEED_LINK_BITS, 180,
             f"km1 to hold {NEED_LINK_BITS} bits of link key on km0-km1")

    attack = Attackers(deployed, sae_lab.km_url("km1"))
    relayed = {"keys": [], "errors": []}
    try:
        held = attack.wait_ready(30)
        time.sleep(SETTLE_S)  # measured: the attack held, not its first burst of connects
        relay = threading.Thread(target=_relayed, args=(relay_src, relayed), daemon=True)
        relay.start()
        lat = {"status": [], "enc_keys": []}
        codes: dict[str, list[int]] = {"status": [], "enc_keys": []}
        for i in range(SAMPLES):
            if i % 20 == 0:
                app.close_connection()  # a new connection: TCP + TLS through the attack
            for name, call in (("status", lambda: app.status("sae-a0")),
                               ("enc_keys", lambda: app.enc_keys("sae-a0", number=1))):
                t0 = time.perf_counter()
                try:
                    code = call().http
                except SaeError:  # no answer within 5 s
                    code = 0
                lat[name].append(time.perf_counter() - t0)
                codes[name].append(code)
            time.sleep(0.02)
        relay.join(100)
        still_held = all(p.poll() is None for p in attack.procs.values())
    finally:
        attack.stop()

    summary = {n: {"p99_ms": round(p99(v) * 1000, 1), "max_ms": round(max(v) * 1000, 1),
                   "codes": sorted(set(codes[n])),
                   "slow": [(i, round(x * 1000)) for i, x in enumerate(v) if x > 0.1]}
               for n, v in lat.items()}
    print(f"\nH1 attack on km1: {summary}; relayed keys {len(relayed['keys'])}; "
          f"attackers {attack.out}")
    assert set(codes["status"]) == {200}, summary
    assert set(codes["enc_keys"]) <= {200, 503} and codes["enc_keys"].count(200) > 0, summary
    assert p99(lat["status"]) < P99_LIMIT_S, summary
    assert p99(lat["enc_keys"]) < P99_LIMIT_S, summary
    assert held and still_held, f"the attack was not in place: {attack.out}"
    # relays through the attacked KM kept flowing: the keys reached km0 and decrypt there
    assert len(relayed["keys"]) >= RELAYED_KEYS, relayed["errors"][-5:]
    sample = relayed["keys"][-8:]
    r = slave.dec_keys("sae-a2", [k["key_ID"] for k in sample])
    assert r.ok, r.message
    assert [k["key"] for k in r.keys()] == [k["key"] for k in sample]
