"""The soak's applications: one thread per (pair, API) asking for keys until told to stop,
through the SAE client (:mod:`qkdtwin.sae.client`), recording every key each end received.

ETSI 014: the master asks its KM for 1-4 keys (``enc_keys``), the slave fetches them by ID
(``dec_keys``; withdrawn ones are counted, the rest fetched). ETSI 004: both applications
open one key stream (the source first), the source takes the next key and the destination
the key at the same index; streams are closed and a new one opened now and then, and after
a final refusal. Errors are counted by kind; the faults make many of them, on purpose.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qkdtwin.chaos.invariants import AppKey
from qkdtwin.sae.client import KmResponse, SaeClient, SaeError, key_bytes
from qkdtwin.scenario.runner import OPEN_STAGGER, WITHDRAWN, _retry_after, _withdrawn_ids

KEY_BITS = 256          # within every star6 user's SLA (iot allows 256)
FETCH_S = 60.0          # how long the second end keeps asking for a key the first end got
HTTP_TIMEOUT = 20.0
RECOVERY_S = 30.0       # errors this long after a fault ended count as "during faults"


@dataclass(frozen=True)
class Flow:
    api: str   # "014" / "004"
    src: str   # master / source SAE
    dst: str   # slave / destination SAE

    @property
    def name(self) -> str:
        return f"{self.api} {self.src}>{self.dst}"


def _gist(r: KmResponse) -> str:
    """A refusal's kind: HTTP code, ETSI 004 status and the message without its numbers,
    IDs and times, so that equal refusals count together."""
    msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d{4}-\d\d-\d\dT[\d:.]+Z?|\b\d+(\.\d+)?\b", "#",
                 r.message)[:100]
    status = f" status {r.status}" if r.status is not None else ""
    return f"HTTP {r.http}{status}" + (f" {msg}" if msg else "")


def parse_flows(text: str) -> list[Flow]:
    """``014:sae-0>sae-1,004:sae-2>sae-3`` -> flows."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        api, _, pair = item.partition(":")
        src, _, dst = pair.partition(">")
        if api not in ("014", "004") or not src or not dst:
            raise ValueError(f"{item!r}: write a flow as 014:SRC>DST or 004:SRC>DST")
        out.append(Flow(api, src, dst))
    return out


class Traffic:
    """Shared by the application threads: records, counters and the stop signal."""

    def __init__(self, lab: Any, flows: list[Flow], seed: int, interval: float = 0.5,
                 rotate_s: tuple[float, float] = (60.0, 180.0)) -> None:
        self.lab = lab
        self.flows = flows
        self.seed = seed
        self.interval = interval
        self.rotate_s = rotate_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.keys: list[AppKey] = []
        self.calls: Counter[str] = Counter()
        self.errors_fault: Counter[str] = Counter()
        self.errors_calm: Counter[str] = Counter()
        self.withdrawn: Counter[str] = Counter()  # keys the second end was told were withdrawn
        self.lost: Counter[str] = Counter()       # keys the second end never got (other reason)
        self.streams_opened: set[str] = set()
        self.streams_closed: set[str] = set()
        self.fault_active = False
        self.fault_ended = 0.0
        self.threads: list[threading.Thread] = []

    # -- bookkeeping --

    def call(self, what: str) -> None:
        with self.lock:
            self.calls[what] += 1

    def error(self, what: str) -> None:
        with self.lock:
            faulty = self.fault_active or time.monotonic() - self.fault_ended < RECOVERY_S
            (self.errors_fault if faulty else self.errors_calm)[what] += 1

    def record(self, flow: Flow, key_id: str, end: str, sae: str, b64: str, sent: float) -> None:
        digest = hashlib.sha256(key_bytes(b64)).hexdigest()
        k = AppKey(flow.name, flow.api, key_id, end, sae, digest, sent, time.time())
        with self.lock:
            self.keys.append(k)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            ends = Counter(k.end for k in self.keys)
            return {"calls": sum(self.calls.values()), "keys_first_end": ends["a"],
                    "keys_second_end": ends["b"],
                    "errors": sum(self.errors_fault.values()) + sum(self.errors_calm.values()),
                    "withdrawn": sum(self.withdrawn.values())}

    # -- threads --

    def client(self, sae: str) -> SaeClient:
        cert, key = self.lab.sae_identity(sae)
        return SaeClient(self.lab.km_url(self.lab.sae_km(sae)), cert, key, self.lab.ca,
                         timeout=HTTP_TIMEOUT, sae_id=sae)

    def start(self) -> None:
        for i, flow in enumerate(self.flows):
            rng = random.Random(f"{self.seed}:{i}:{flow.name}")
            target = self._run_014 if flow.api == "014" else self._run_004
            t = threading.Thread(target=self._guard, args=(target, flow, rng), daemon=True,
                                 name=f"app {flow.name}")
            self.threads.append(t)
            t.start()

    def join(self, timeout: float) -> list[str]:
        """Stop and wait; the names of the threads that did not return in time."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _guard(self, target: Callable[[Flow, random.Random], None], flow: Flow,
               rng: random.Random) -> None:
        while not self.stop.is_set():
            try:
                target(flow, rng)
            except Exception as exc:  # never let an application die silently
                self.error(f"{flow.api} crash: {type(exc).__name__}: {str(exc)[:80]}")
                self.stop.wait(2.0)

    def _try(self, what: str, fn: Callable[[], KmResponse]) -> KmResponse | None:
        """One call; None (counted) when the KM cannot be reached or answers no API."""
        self.call(what)
        try:
            return fn()
        except SaeError as exc:
            text = str(exc)
            kind = ("unreachable" if "cannot reach" in text else
                    "timeout" if "did not answer" in text else "client error")
            self.error(f"{what}: {kind}")
            return None

    # -- ETSI 014 --

    def _run_014(self, flow: Flow, rng: random.Random) -> None:
        with self.client(flow.src) as master, self.client(flow.dst) as slave:
            while not self.stop.is_set():
                n = rng.randint(1, 4)
                sent = time.time()
                r = self._try("enc_keys", lambda n=n: master.enc_keys(flow.dst, n, KEY_BITS))
                if r is None:
                    self.stop.wait(1.0)
                    continue
                if not r.ok:
                    self.error(f"enc_keys: {_gist(r)}")
                    self.stop.wait(_retry_after(r) or 0.5)
                    continue
                got = {k.get("key_ID"): k.get("key") for k in r.keys()}
                for kid, b64 in got.items():
                    self.record(flow, kid, "a", flow.src, b64, sent)
                self._fetch_014(flow, slave, [k for k in got if isinstance(k, str)])
                self.stop.wait(self.interval * rng.uniform(0.5, 1.5))

    def _fetch_014(self, flow: Flow, slave: SaeClient, ids: list[str]) -> None:
        deadline = time.monotonic() + FETCH_S
        while ids:
            sent = time.time()
            d = self._try("dec_keys", lambda ids=ids: slave.dec_keys(flow.src, ids))
            if d is not None and d.ok:
                for k in d.keys():
                    self.record(flow, k.get("key_ID"), "b", flow.dst, k.get("key"), sent)
                return
            if d is not None and (gone := _withdrawn_ids(d)):
                with self.lock:
                    self.withdrawn[flow.name] += len(gone)
                ids = [k for k in ids if k not in gone]
                continue
            if d is not None and d.http not in (503,) and d.http < 500:
                self.error(f"dec_keys: {_gist(d)}")
                break
            if d is not None:
                self.error(f"dec_keys: {_gist(d)}")
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if ids:
            with self.lock:
                self.lost[flow.name] += len(ids)

    # -- ETSI 004 --

    def _run_004(self, flow: Flow, rng: random.Random) -> None:
        with self.client(flow.src) as source, self.client(flow.dst) as dest:
            while not self.stop.is_set():
                stream = str(uuid.uuid4())
                if self._open_004(flow, source, dest, stream):
                    self._stream_004(flow, rng, source, dest, stream)
                self._close_004(source, dest, stream)
                self.stop.wait(rng.uniform(1.0, 3.0))

    def _open_004(self, flow: Flow, source: SaeClient, dest: SaeClient, stream: str) -> bool:
        qos = {"key_chunk_size": KEY_BITS // 8}
        with self.lock:
            self.streams_opened.add(stream)
        answers: dict[str, KmResponse | None] = {}

        def open_dest() -> None:
            time.sleep(OPEN_STAGGER)  # the source registers first: its KM makes the keys
            answers["b"] = self._try("open_connect", lambda: dest.open_connect(
                flow.src, flow.dst, qos, stream))

        t = threading.Thread(target=open_dest, daemon=True)
        t.start()
        answers["a"] = self._try("open_connect", lambda: source.open_connect(
            flow.src, flow.dst, qos, stream))
        t.join()
        ok = True
        for r in answers.values():
            if r is not None and not r.ok:
                self.error(f"open_connect: {_gist(r)}")
            ok = ok and r is not None and r.ok
        return ok

    def _stream_004(self, flow: Flow, rng: random.Random, source: SaeClient, dest: SaeClient,
                    stream: str) -> None:
        until = time.monotonic() + rng.uniform(*self.rotate_s)
        failures = 0
        while not self.stop.is_set() and time.monotonic() < until and failures < 10:
            sent = time.time()
            mine = self._try("get_key", lambda: source.wait_key(stream, timeout=5.0))
            if mine is None or mine.status != 0:
                failures += 1
                if mine is not None:
                    self.error(f"get_key: {_gist(mine)}")
                    if mine.status not in (2, 3, 9):
                        return  # a final refusal: a new stream
                self.stop.wait(1.0)
                continue
            failures = 0
            idx = mine.body.get("index")
            self.record(flow, f"{stream}:{idx}", "a", flow.src, mine.body["key_buffer"], sent)
            self._fetch_004(flow, dest, stream, idx)
            self.stop.wait(self.interval * rng.uniform(0.5, 1.5))

    def _fetch_004(self, flow: Flow, dest: SaeClient, stream: str, idx: Any) -> None:
        deadline = time.monotonic() + FETCH_S
        while time.monotonic() < deadline:
            sent = time.time()
            r = self._try("get_key", lambda: dest.wait_key(stream, idx, timeout=5.0))
            if r is not None and r.status == 0 and r.body.get("index") == idx:
                self.record(flow, f"{stream}:{idx}", "b", flow.dst, r.body["key_buffer"], sent)
                return
            if r is not None and r.http == WITHDRAWN:
                with self.lock:
                    self.withdrawn[flow.name] += 1
                return
            if r is not None:
                self.error(f"get_key: {_gist(r)}")
                if r.status not in (2, 3, 9):
                    break
            time.sleep(1.0)
        with self.lock:
            self.lost[flow.name] += 1

    def _close_004(self, source: SaeClient, dest: SaeClient, stream: str) -> None:
        """CLOSE at both ends (retried while a KM is unreachable); a stream is closed when
        both ends got an answer (ok, or the KM no longer knows the stream)."""
        closed = 0
        for c in (source, dest):
            for _ in range(10):
                r = self._try("close", lambda c=c: c.close(stream))
                if r is not None:
                    if not r.ok and r.http != 404:
                        self.error(f"close: {_gist(r)}")
                    closed += 1
                    break
                time.sleep(2.0)
        if closed == 2:
            with self.lock:
                self.streams_closed.add(stream)
