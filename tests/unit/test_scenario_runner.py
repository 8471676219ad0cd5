"""The scenario runner's checks and timing, with in-memory KMs standing in for a lab: identical
keys pass, a differing key fails the pair (and the scenario), 503s are retried until the
pair's timeout, refusals end a pair (or pass it when a refusal is expected), `after` orders
pairs, faults are applied at their moment and a failed fault fails the run. The same runner
against a deployed lab: tests/integration/test_scenario.py."""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from qkdtwin.sae.client import KmResponse, SaeError
from qkdtwin.scenario.model import parse_scenario
from qkdtwin.scenario.report import format_table
from qkdtwin.scenario.runner import ScenarioRunner

pytestmark = pytest.mark.unit

SAES = {"sae-0": "km0", "sae-1": "km1", "sae-2": "km2", "sae-9": "km1"}


class FakeKms:
    """Keys handed to a master wait at the slave's KM; ETSI 004 chunks by stream and index."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, str] = {}
        self.streams: dict[str, dict[int, str]] = {}
        self.next_index: dict[tuple[str, str], int] = {}
        self.counter = 0
        self.busy_until = 0.0  # enc_keys answers 503 before this (monotonic)
        self.corrupt = False  # the slave gets a different key
        self.refuse: dict[str, tuple[int, str]] = {}  # sae -> (http, message)
        self.unreachable_until = 0.0
        self.tls_broken = False
        self.calls: list[tuple[float, str, str]] = []

    def key(self) -> str:
        self.counter += 1
        return base64.b64encode(os.urandom(32)).decode()


class FakeClient:
    def __init__(self, kms: FakeKms, sae: str) -> None:
        self.kms, self.sae = kms, sae

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _r(self, http: int, body: dict[str, Any]) -> KmResponse:
        return KmResponse(http, body, 0.001)

    def _gate(self, what: str) -> KmResponse | None:
        self.kms.calls.append((time.monotonic(), self.sae, what))
        if time.monotonic() < self.kms.unreachable_until:
            raise SaeError("cannot reach the KM at https://x:8443: connection refused")
        if self.kms.tls_broken:
            raise SaeError("TLS with the KM at https://x:8443 failed (wrong CA, or ...)")
        if self.sae in self.kms.refuse:
            http, msg = self.kms.refuse[self.sae]
            return self._r(http, {"message": msg})
        return None

    def status(self, slave: str) -> KmResponse:
        return self._gate("status") or self._r(200, {"status_extension": {
            "session_id": f"sid-{self.sae}-{slave}"}})

    def enc_keys(self, slave: str, number: int = 1, size: int | None = None,
                 priority: int | None = None) -> KmResponse:
        if (r := self._gate("enc_keys")) is not None:
            return r
        if time.monotonic() < self.kms.busy_until:
            return self._r(503, {"message": "not enough key", "details": [
                {"retry_after_s": 0.05}]})
        with self.kms.lock:
            keys = [{"key_ID": f"id{self.kms.counter}-{i}", "key": self.kms.key()}
                    for i in range(number)]
            for k in keys:
                self.kms.pending[k["key_ID"]] = k["key"]
        return self._r(200, {"keys": keys})

    def dec_keys(self, master: str, key_ids: list[str]) -> KmResponse:
        if (r := self._gate("dec_keys")) is not None:
            return r
        with self.kms.lock:
            keys = [{"key_ID": k, "key": self.kms.pending.pop(k)} for k in key_ids]
        if self.kms.corrupt:
            keys[0]["key"] = base64.b64encode(b"\x00" * 32).decode()
        return self._r(200, {"keys": keys})

    def open_connect(self, source: str, destination: str, qos: dict | None = None,
                     key_stream_id: str | None = None) -> KmResponse:
        if (r := self._gate("open")) is not None:
            return r
        assert qos and qos["key_chunk_size"] == 32
        with self.kms.lock:
            self.kms.streams.setdefault(key_stream_id, {})
        return self._r(200, {"status": 0, "key_stream_id": key_stream_id})

    def wait_key(self, stream: str, index: int | None = None,
                 timeout: float = 30.0) -> KmResponse:
        if (r := self._gate("get_key")) is not None:
            return r
        with self.kms.lock:
            chunks = self.kms.streams[stream]
            if index is None:
                index = self.kms.next_index.get((stream, self.sae), 0)
                self.kms.next_index[(stream, self.sae)] = index + 1
            if index not in chunks:
                chunks[index] = self.kms.key()
            buf = chunks[index]
        if self.kms.corrupt and self.sae == "sae-1":
            buf = base64.b64encode(b"\x01" * 32).decode()
        return self._r(200, {"status": 0, "index": index, "key_buffer": buf})

    def close(self, stream: str) -> KmResponse:
        return self._r(200, {"status": 0})


class FakeLab:
    name = "fake"
    runtime = "netns"
    qkd_links: list[dict[str, Any]] = []

    def __init__(self, tmp: Path) -> None:
        self.lab_dir = tmp
        self.ca = tmp / "ca.crt"

    def saes(self) -> dict[str, dict[str, str]]:
        return {s: {"km": km, "user": "u", "status": "active"} for s, km in SAES.items()}

    def sae_identity(self, sae: str) -> tuple[Path, Path]:
        return (self.lab_dir / f"{sae}.crt", self.lab_dir / f"{sae}.key")


class RecordingInjector:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.applied: list[tuple[str, float]] = []
        self.fail = fail or set()
        self.t0 = time.monotonic()

    def apply(self, fault) -> dict[str, Any]:
        from qkdtwin.errors import UserError

        self.applied.append((fault.action, time.monotonic() - self.t0))
        if fault.action in self.fail:
            raise UserError("the module did not confirm")
        return {"ok": True}


def run(tmp_path, kms: FakeKms, data: dict, injector=None, lines=None):
    sc = parse_scenario(data, "t.yml")
    runner = ScenarioRunner(sc, FakeLab(tmp_path), "fake",
                            log=(lines.append if lines is not None else lambda _: None),
                            injector=injector)
    runner._client = lambda sae: FakeClient(kms, sae)  # type: ignore[method-assign]
    return runner.run()


def test_identical_keys_pass_and_are_timed(tmp_path):
    kms = FakeKms()
    lines: list[str] = []
    res = run(tmp_path, kms, {"pairs": [
        {"name": "a", "from": "sae-0", "to": "sae-1", "keys": 5, "per_request": 2},
        {"name": "b", "from": "sae-2", "to": "sae-1", "api": "004", "keys": 3}]},
        lines=lines)
    assert res.ok
    a, b = res.pairs
    assert (a.keys_matched, a.mismatches, a.state, a.session_id) == (5, 0, "ok", "sid-sae-0-sae-1")
    assert len(a.latencies) == 3  # 2 + 2 + 1 keys
    assert (b.keys_matched, b.state, b.api) == (3, "ok", "004")
    assert a.first_key_s is not None and a.percentile(0.5) <= a.percentile(0.95)
    d = res.as_dict()
    assert d["ok"] and d["pairs"][0]["latency_p95_s"] is not None
    assert any("a: first key after" in x for x in lines)
    table = format_table(res)
    assert "PASSED" in table and "5/5" in table and "sae-0->sae-1" in table


@pytest.mark.parametrize("api", ["014", "004"])
def test_a_differing_key_fails_the_pair(tmp_path, api):
    kms = FakeKms()
    kms.corrupt = True
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "api": api,
                                         "keys": 2}]})
    assert not res.ok
    p = res.pairs[0]
    assert p.state == "failed" and p.mismatches >= 1
    assert "differ between sae-0 and sae-1" in " ".join(p.errors)
    assert "FAILED" in format_table(res)


def test_503_is_retried_until_key_comes(tmp_path):
    kms = FakeKms()
    kms.busy_until = time.monotonic() + 0.4
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "keys": 2}]})
    p = res.pairs[0]
    assert res.ok and p.retries >= 3 and p.first_key_s >= 0.35


def test_no_key_within_the_timeout_fails(tmp_path):
    kms = FakeKms()
    kms.busy_until = time.monotonic() + 60
    t = time.monotonic()
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "timeout": 0.6}]})
    assert time.monotonic() - t < 5
    p = res.pairs[0]
    assert not res.ok and p.state == "failed"
    assert "no key within the pair's timeout (0.6 s), 0/4 keys; last answer: HTTP 503" \
        in p.errors[0]


def test_an_unreachable_km_is_waited_for(tmp_path):
    kms = FakeKms()
    kms.unreachable_until = time.monotonic() + 0.5  # a restarting KM
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "keys": 1}]})
    assert res.ok and res.pairs[0].retries >= 1


def test_a_tls_failure_is_not_retried(tmp_path):
    kms = FakeKms()
    kms.tls_broken = True
    t = time.monotonic()
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1"}]})
    assert time.monotonic() - t < 2 and not res.ok
    assert res.pairs[0].retries == 0 and "TLS with the KM" in res.pairs[0].errors[0]


def test_refusals_end_the_pair_unless_expected(tmp_path):
    kms = FakeKms()
    kms.refuse["sae-9"] = (401, "SAE sae-9 not authorised: user mallory is disabled")
    res = run(tmp_path, kms, {"pairs": [
        {"name": "m", "from": "sae-9", "to": "sae-1"},
        {"name": "m-expected", "from": "sae-9", "to": "sae-2", "expect": "refused"},
        {"name": "ok-but-expected-refusal", "from": "sae-0", "to": "sae-1", "keys": 1,
         "expect": "refused"}]})
    m, expected, wrong = res.pairs
    assert m.state == "failed" and "HTTP 401: SAE sae-9 not authorised" in m.errors[0]
    assert expected.state == "refused" and expected.passed
    assert wrong.state == "failed" and "expected the KM to refuse" in wrong.errors[0]
    assert not res.ok
    assert "refused (expected)" in format_table(res)


def test_after_and_at_order_the_pairs(tmp_path):
    kms = FakeKms()
    res = run(tmp_path, kms, {"pairs": [
        {"name": "first", "from": "sae-0", "to": "sae-1", "keys": 3, "interval": 0.1},
        {"name": "second", "from": "sae-2", "to": "sae-1", "keys": 1, "after": "first"},
        {"name": "late", "from": "sae-0", "to": "sae-2", "keys": 1, "at": 0.5}]})
    first, second, late = res.pairs
    assert res.ok
    assert second.start >= first.end
    assert late.start >= 0.5


def test_faults_are_applied_at_their_moment(tmp_path):
    kms = FakeKms()
    inj = RecordingInjector()
    lines: list[str] = []
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "keys": 2}],
                              "faults": [{"at": 0.3, "action": "link_down", "link": "a:b"},
                                         {"at": 0.1, "action": "eve", "link": "a:b"}]},
              injector=inj, lines=lines)
    assert res.ok
    assert [a for a, _ in inj.applied] == ["eve", "link_down"]
    assert inj.applied[0][1] >= 0.1 and inj.applied[1][1] >= 0.3
    assert [f.ok for f in res.faults] == [True, True]
    assert any("fault: link down a:b" in x for x in lines)


def test_a_fault_that_cannot_be_applied_fails_the_run(tmp_path):
    kms = FakeKms()
    res = run(tmp_path, kms, {"pairs": [{"from": "sae-0", "to": "sae-1", "keys": 1}],
                              "faults": [{"at": 0, "action": "eve", "link": "a:b"}]},
              injector=RecordingInjector(fail={"eve"}))
    assert res.pairs[0].passed and not res.ok
    assert res.faults[0].error == "the module did not confirm"
    assert "FAILED: the module did not confirm" in format_table(res)
