"""The QKD module service as two real processes on loopback (Alice 127.0.0.2, Bob 127.0.0.3,
a Mosquitto with the lab's KM ACL): same keys under the same IDs through ETSI 014, the
eavesdropper raises the QBER and stops key, telemetry and events reach the broker, and
restarts of either end neither lose nor duplicate key."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import requests
import yaml

from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.qkd_module.service import eve_topic
from qkdtwin.quantum import wire
from tests.support.broker import TestBroker, free_port
from tests.support.waiting import wait_for as support_wait_for

pytestmark = [
    pytest.mark.unit,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

LINK = "km0-km1"
# What role mqtt_broker gives a KM node, plus the operator identity.
KM_ACL = "".join(
    f"user {n}\ntopic read qkd/v1/km/{n}/#\ntopic read qkd/v1/reply/{n}/#\n"
    f"topic write qkd/v1/telemetry/{n}/#\ntopic write qkd/v1/events/{n}\n\n"
    for n in ("km0", "km1")) + "user host\ntopic readwrite qkd/v1/#\n"
QKD = {"protocol": "bb84-decoy", "length_km": 5, "source_rate_hz": 1.0e8, "mu": 0.5,
       "nu": 0.1, "block_size": 100000}


class Module:
    def __init__(self, root: Path, broker: TestBroker | None, ca, side: str, peer_port: int,
                 me: str | None = None, other: str | None = None, model: str = "bb84") -> None:
        node, peer = ("km0", "km1") if side == "a" else ("km1", "km0")
        if me is None:
            me, other = ("127.0.0.2", "127.0.0.3") if side == "a" else ("127.0.0.3", "127.0.0.2")
        ident = ca.issue(node)
        self.addr = me
        self.peer_port = peer_port
        self.token_file = root / node / f"qkd-{LINK}.api-token"  # the module's default
        self._http: requests.Session | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.peer = peer
        self.config = root / f"qkd-{node}.yml"
        self.config.write_text(yaml.safe_dump({
            "node": node, "link": LINK, "side": side, "peer": peer, "local_ipv4": me,
            "peer_ipv4": other, "peer_port": peer_port,
            "listen": {"host": "127.0.0.1", "port": self.port},
            "data_dir": str(root / node), "qkd": {**QKD, "model": model},
            "telemetry_interval_s": 0.5,
            "tls": {"ca": ca.ca, "cert": ident.cert, "key": ident.key},
            "broker": broker and {"host": "127.0.0.1", "port": broker.port, "ca": ca.ca,
                                  "cert": ident.cert, "key": ident.key}}))
        self.log = root / f"{node}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Module:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qkdtwin.qkd_module", "--config", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self.health() is not None, 30, f"module API {self.url}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def health(self) -> dict | None:
        try:
            return requests.get(self.url + "/healthz", timeout=2).json()
        except (requests.RequestException, ValueError):
            return None

    @property
    def http(self) -> requests.Session:
        """A client with the module's API token (what the KM does)."""
        if self._http is None:
            self._http = requests.Session()
            if self.token_file.exists():  # (a module without API tokens makes none)
                self._http.headers["Authorization"] = \
                    f"Bearer {self.token_file.read_text().strip()}"
        return self._http

    def post(self, op: str, body: dict, sae: str | None = None) -> requests.Response:
        return self.http.post(f"{self.url}/api/v1/keys/{sae or self.peer}/{op}", json=body,
                             timeout=20)


# this file polls every 0.2 s
wait_for = partial(support_wait_for, step=0.2)


def keys_of(r: requests.Response) -> dict[str, bytes]:
    assert r.status_code == 200, r.text
    return {k["key_ID"]: base64.b64decode(k["key"]) for k in r.json()["keys"]}


# every test of a running link runs for every link model: statistical and analytic must
# behave the same at the module's interfaces (ETSI 014, telemetry, Eve, restarts)
@pytest.fixture(scope="module", params=["bb84", "statistical", "analytic"])
def link(request, tmp_path_factory, test_ca):
    root = tmp_path_factory.mktemp(f"qkdlink-{request.param}")
    broker = TestBroker(root / "broker", test_ca, acl=KM_ACL).start()
    peer_port = free_port()
    a = Module(root, broker, test_ca, "a", peer_port, model=request.param)
    b = Module(root, broker, test_ca, "b", peer_port, model=request.param)
    host = test_ca.issue("host", ou="operator")
    bus = Bus(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, host.cert, host.key), "host")
    seen: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def collect(topic, payload, msg):
        with lock:
            seen.append((topic, payload))

    bus.subscribe("qkd/v1/telemetry/#", collect)
    bus.subscribe("qkd/v1/events/#", collect)
    bus.start()
    try:
        b.start()
        a.start()
        yield a, b, bus, seen
    finally:
        for m in (a, b):
            m.stop()
        bus.stop()
        broker.stop()
        for m in (a, b):
            if m.log.exists() and b"Traceback" in m.log.read_bytes():
                pytest.fail(f"traceback in {m.log}:\n{m.log.read_text()[-3000:]}")


def wait_keys(a: Module, n: int, timeout: float = 90) -> None:
    def enough():
        r = a.http.get(f"{a.url}/api/v1/keys/{a.peer}/status", timeout=5).json()
        return r["stored_key_count"] >= n
    wait_for(enough, timeout, f"{n} keys of 256 bits at Alice")


def test_both_ends_hand_out_the_same_keys_under_the_same_ids(link):
    a, b, _, _ = link
    wait_keys(a, 8)
    got = keys_of(a.post("enc_keys", {"number": 4}))
    got |= keys_of(a.post("enc_keys", {"number": 2, "size": 512}))
    assert len(got) == 6 and {len(v) for v in got.values()} == {32, 64}
    ids = list(got)
    bob = keys_of(b.post("dec_keys", {"key_IDs": [{"key_ID": k} for k in ids[:5]]}))
    r = b.http.get(f"{b.url}/api/v1/keys/{b.peer}/dec_keys", params={"key_ID": ids[5]},
                     timeout=10)
    bob |= keys_of(r)
    assert bob == got
    # delivered once, at both ends
    again = b.post("dec_keys", {"key_IDs": [{"key_ID": ids[0]}]})
    assert again.status_code == 400
    assert again.json()["message"] == "one or more keys specified are not found on KME"
    st = b.http.get(f"{b.url}/api/v1/keys/{b.peer}/status", timeout=5).json()
    assert st["master_SAE_ID"] == "km0" and st["slave_SAE_ID"] == "km1"
    assert st["source_KME_ID"] == "km1" and st["key_size"] == 256
    h = a.health()
    assert h["status"] == "up" and h["qber"] < 0.06 and h["secret_bits_total"] > 0


@pytest.mark.parametrize("who, op, body, sae, code, message", [
    ("b", "enc_keys", {}, None, 400, "offered by the a end"),
    ("a", "dec_keys", {"key_IDs": [{"key_ID": "x"}]}, None, 400, "offered by the b end"),
    ("a", "enc_keys", {}, "km7", 400, "unknown SAE ID"),
    ("a", "enc_keys", {"size": 100}, None, 400, "multiple of 8"),
    ("a", "enc_keys", {"number": 0}, None, 400, "number must be"),
    ("a", "enc_keys", {"number": "x"}, None, 400, "must be an integer"),
    ("a", "enc_keys", {"extension_mandatory": [{"a": 1}]}, None, 400, "extension_mandatory"),
    ("a", "enc_keys", {"number": 1000, "size": 8192}, None, 503, "not enough key"),
    ("b", "dec_keys", {"key_IDs": "x"}, None, 400, "key_IDs must be"),
    ("b", "dec_keys", {"key_IDs": []}, None, 400, "at least one"),
])
def test_etsi_errors_are_clear(link, who, op, body, sae, code, message):
    a, b, _, _ = link
    r = (a if who == "a" else b).post(op, body, sae)
    assert r.status_code == code and message in r.json()["message"]


def test_telemetry_and_events_reach_the_broker_under_the_km_acl(link):
    a, b, _, seen = link
    wait_keys(a, 1)

    def telemetry(node):
        return [p for t, p in seen if t == f"qkd/v1/telemetry/{node}/{LINK}"]

    wait_for(lambda: telemetry("km0") and telemetry("km1"), 15, "telemetry of both ends")
    t = telemetry("km1")[-1]
    for field in ("qber", "qber_block", "skr_bps", "sifted_bps", "stored_bits", "realtime_factor",
                  "eve_fraction", "status"):
        assert field in t
    assert t["type"] == "telemetry" and t["source"] == "qkd" and t["link"] == LINK
    # the rates are over a recent window: one without a finished block says 0, so wait for
    # a report of produced key rather than taking whichever came last
    t = wait_for(lambda: next((p for p in reversed(telemetry("km1")) if p["skr_bps"] > 0),
                              None), 30, "telemetry with a secret key rate")
    assert t["status"] == "up" and 0 < t["realtime_factor"] <= 1.5
    events = [p for tp, p in seen if tp.startswith("qkd/v1/events/")]
    assert any(e["kind"] == "qkd_peer_connected" and e["element"] == "km1"
               and e["source"] == f"qkd:{LINK}" for e in events)
    metrics = requests.get(a.url + "/metrics", timeout=5).text
    assert "qkdtwin_qkd_secret_bits_total" in metrics and "qkdtwin_qkd_qber" in metrics


def test_eve_raises_the_qber_and_stops_key(link):
    a, b, bus, seen = link
    wait_keys(a, 1)
    before = a.health()
    assert before["eve_fraction"] == 0.0 and before["qber"] < 0.06
    seen.clear()
    bus.publish(eve_topic("km0", LINK), {"type": "eve", "fraction": 0.5})
    wait_for(lambda: [p for t, p in seen if t.endswith(f"km0/{LINK}")
                      and p.get("eve_fraction") == 0.5], 15, "Alice confirming Eve")
    aborted0 = b.health()["blocks_aborted"]
    wait_for(lambda: b.health()["blocks_aborted"] >= aborted0 + 5, 90, "aborted blocks")
    # blocks emitted before the switch may still finish with key; none after it
    eve_block = a.health()["eve_since_block"]
    wait_for(lambda: b.health()["current_block"] > eve_block + 12, 90, "blocks with Eve")
    # blocks are post-processed in parallel: Bob finishes a block after Alice, and a block
    # that gives key after later ones that abort, so wait for both ends
    for end in (a, b):
        wait_for(lambda end=end: (lambda h: h["oldest_open_block"] > eve_block + 1
                                  and h["pending_blocks"] == 0)(end.health()), 90,
                 "older blocks done")
    ok_b = b.health()["blocks_ok"]
    stored = a.health()["stored_bits"]
    wait_for(lambda: b.health()["blocks_aborted"] >= aborted0 + 9, 90, "more aborted blocks")
    # both ends report the QBER of their newest estimated block: compare one block's
    # (blocks keep coming while Eve listens, and Bob records each a little after Alice)
    ha, hb = wait_for(lambda: (lambda ha, hb: (ha, hb) if ha["qber_block"] == hb["qber_block"]
                               else None)(a.health(), b.health()), 30, "one block at both ends")
    # expected QBER e_d + f (1/4 - e_d / 2) = 0.150 at f = 0.5
    assert 0.12 < hb["qber"] < 0.18 and abs(ha["qber"] - hb["qber"]) < 1e-9
    assert hb["qber_block"] > eve_block  # a block sent wholly under attack
    assert hb["eve_fraction"] == 0.5  # Bob learns it from the channel stream
    # Bob sees the first attacked frame in the block Alice was emitting or the next one
    first_attacked = hb["eve_since_block"]
    assert first_attacked in (eve_block, eve_block + 1)
    assert ha["last_ok_block"] <= first_attacked and hb["last_ok_block"] <= first_attacked
    assert hb["blocks_ok"] == ok_b and ha["stored_bits"] == stored  # no key while Eve listens
    # the newest published telemetry (handlers run on a pool: arrival order is not ts order)
    time.sleep(1.5)
    tel = max((p for t, p in seen if t == f"qkd/v1/telemetry/km1/{LINK}"), key=lambda p: p["ts"])
    assert tel["qber"] > 0.11 and tel["eve_fraction"] == 0.5
    assert any(p.get("kind") == "qkd_eve_changed" for _, p in seen)
    assert any(p.get("kind") == "qkd_block_aborted" for _, p in seen)
    # switched off through the module's own control endpoint: key flows again
    r = a.http.post(a.url + "/control/eve", json={"fraction": 0}, timeout=5)
    assert r.json() == {"link": LINK, "eve_fraction": 0.0}
    assert b.http.post(b.url + "/control/eve", json={"fraction": 0},
                         timeout=5).status_code == 400
    # the block Alice was emitting when Eve left can be partly attacked (a QBER between the
    # clean value and the abort threshold still gives key): judge only a block sent wholly
    # after she left, as the attack half does with eve_since_block
    off_block = a.health()["eve_since_block"]
    assert off_block > first_attacked
    clean = wait_for(lambda: (lambda h: h if h["qber_block"] is not None
                              and h["qber_block"] > off_block
                              and h["last_ok_block"] > off_block else None)(b.health()),
                     90, "key from a block sent after Eve left")
    assert clean["qber"] < 0.06


def test_restarts_neither_lose_nor_duplicate_key(link):
    a, b, _, _ = link
    wait_keys(a, 4)
    held = keys_of(a.post("enc_keys", {"number": 4}))  # Bob holds them, the KM has not asked
    b.stop()
    down = a.post("enc_keys", {"number": 1})
    assert down.status_code == 503 and "peer module" in down.json()["message"]
    b.start()
    wait_for(lambda: a.health()["status"] == "up" and b.health()["status"] == "up", 60,
             "reconnection")
    assert keys_of(b.post("dec_keys", {"key_IDs": [{"key_ID": k} for k in held]})) == held
    stored = a.health()["stored_bits"]
    sessions = b.health()["sessions"]
    a.stop()
    a.start()
    assert a.health()["stored_bits"] >= stored - 8 * 64  # nothing lost (but a pending block)
    wait_for(lambda: b.health()["sessions"] > sessions and a.health()["status"] == "up", 60,
             "Alice reconnecting")
    wait_keys(a, 6)
    fresh = keys_of(a.post("enc_keys", {"number": 6}))
    assert not set(fresh) & set(held)
    assert keys_of(b.post("dec_keys", {"key_IDs": [{"key_ID": k} for k in fresh]})) == fresh
    assert len({v for v in fresh.values()} | {v for v in held.values()}) == 10
    json.dumps(a.health())


# -- finding L5: the module's API, its peer port and the quantum channel on the wire ----------

def test_api_takes_no_request_without_the_token_but_health_and_metrics(link):
    a, b, _, _ = link
    wait_keys(a, 1)
    wrong = {"Authorization": "Bearer " + "x" * 43}
    for who, method, path, body in (
            (a, "post", f"/api/v1/keys/{a.peer}/enc_keys", {"number": 1}),
            (a, "get", f"/api/v1/keys/{a.peer}/status", None),
            (b, "get", f"/api/v1/keys/{b.peer}/dec_keys?key_ID=x", None),
            (a, "post", "/control/eve", {"fraction": 1.0})):
        for headers in ({}, wrong):
            r = requests.request(method, who.url + path, json=body, headers=headers, timeout=5)
            assert r.status_code == 401 and "token" in r.json()["message"], (path, r.text)
    assert a.health()["eve_fraction"] == 0.0  # nobody switched Eve on
    assert requests.get(a.url + "/metrics", timeout=5).status_code == 200
    for m in (a, b):
        assert m.token_file.stat().st_mode & 0o777 == 0o600


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the module closes the connection within `seconds` (we send nothing more)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_peer_port_checks_the_source_first_and_bounds_the_hello(link):
    a, b, _, _ = link
    # a stranger is dropped before the module reads a byte (it used to wait 10 s for a hello)
    stranger = socket.create_connection((b.addr, b.peer_port), timeout=5,
                                        source_address=("127.0.0.9", 0))
    assert _closed_within(stranger, 3.0)
    # from the peer's address, a length field of 256 MiB allocates nothing and is refused
    rss = _rss(b.proc.pid)
    conns = [socket.create_connection((b.addr, b.peer_port), timeout=5,
                                      source_address=(a.addr, 0)) for _ in range(3)]
    for c in conns:
        c.sendall(struct.pack(">I", 256 * 1024 * 1024 - 1) + b"\0" * 64)
    assert all(_closed_within(c, 3.0) for c in conns)
    assert _rss(b.proc.pid) - rss < 64 << 20
    assert b.health()["status"] == "up"


class Tap:
    """A TCP relay between Alice and Bob that keeps what Alice sends on each connection
    (a passive listener on the classical link). Bob sees Alice's address as the source."""

    def __init__(self, listen: str, port: int, bob: str, alice: str) -> None:
        self.ls = socket.create_server((listen, port))
        self.bob, self.alice, self.port = bob, alice, port
        self.streams: list[bytearray] = []
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.ls.accept()
                up = socket.create_connection((self.bob, self.port),
                                              source_address=(self.alice, 0))
            except OSError:
                return
            seen = bytearray()
            self.streams.append(seen)
            self.socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, seen), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, None), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, seen: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if seen is not None and len(seen) < 8 << 20:
                    seen += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.ls.close()
        for s in self.socks:
            s.close()


def frames_read_by_a_sniffer(stream: bytes) -> list[dict]:
    """Every module message a passive listener decodes from one direction of a connection."""
    out, i = [], 0
    while i + 4 <= len(stream):
        (n,) = struct.unpack(">I", stream[i:i + 4])
        if i + 4 + n > len(stream):
            break
        try:
            out.append(wire.decode(stream[i + 4:i + 4 + n]))
        except (ValueError, KeyError, TypeError):
            break
        i += 4 + n
    return out


@pytest.mark.parametrize("model", ["bb84", "statistical", "analytic"])
def test_a_passive_listener_on_the_link_cannot_read_the_quantum_channel(tmp_path, test_ca,
                                                                        model):
    port = free_port()
    a = Module(tmp_path, None, test_ca, "a", port, me="127.0.0.12", other="127.0.0.15",
               model=model)
    b = Module(tmp_path, None, test_ca, "b", port, me="127.0.0.13", other="127.0.0.12",
               model=model)
    tap = Tap("127.0.0.15", port, "127.0.0.13", "127.0.0.12")
    try:
        b.start()
        a.start()
        wait_keys(a, 1)  # key flows through the tap
        got = keys_of(a.post("enc_keys", {"number": 1}))
        assert keys_of(b.post("dec_keys", {"key_IDs": [{"key_ID": k} for k in got]})) == got
        msgs = [m for st in list(tap.streams) for m in frames_read_by_a_sniffer(bytes(st))]
        assert any(m.get("type") == "hello" for m in msgs)  # the sniffer does read frames
        frames = [m for m in msgs if m.get("type") == "frame"]
        # each would hand over Alice's bit and basis of every detected slot: the raw key
        assert not frames, f"the sniffer read {sum(len(f['state']) for f in frames)} " \
                           f"photon states (bit, basis) in {len(frames)} channel frames"
        # nor the analytic link's seed, from which both ends derive the key, nor the
        # statistical link's sifted bits
        assert not [m for m in msgs if m.get("type") in ("seed", "sifted")]
        if model == "bb84":
            assert max(len(st) for st in tap.streams) > 100_000  # the quantum stream went by
    finally:
        for m in (a, b):
            m.stop()
        tap.close()
