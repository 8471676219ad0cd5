"""Run a scenario against a deployed lab: one thread per application pair (started at its
``at``, or when the pair it comes ``after`` has ended), one thread injecting the faults at
their moments, and the key checks.

ETSI 014: the master asks its KM for keys (``enc_keys``, 503 retried until the pair's
timeout: the first key may wait for the QKD links), the slave fetches the same key IDs from
its own KM (``dec_keys``); ETSI 004: both applications open the same key stream, the source
takes the next key and the destination the key at the same index. Keys must be identical.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.events import fold_sessions, load_events
from qkdtwin.sae.client import KmResponse, SaeClient, SaeError
from qkdtwin.scenario.faults import FaultInjector
from qkdtwin.scenario.model import Fault, Pair, Scenario

Log = Callable[[str], None]
WAIT_NOTE_EVERY = 10.0  # seconds between "still waiting" lines of a pair
HTTP_TIMEOUT = 60.0
OPEN_STAGGER = 0.5  # s between the source's and the destination's ETSI 004 OPEN_CONNECT


@dataclass
class PairResult:
    name: str
    api: str
    src: str
    dst: str
    src_km: str
    dst_km: str
    user: str
    expect: str
    keys_wanted: int
    session_id: str | None = None
    state: str = "pending"  # pending, running, ok, refused (as expected), failed
    keys_matched: int = 0
    mismatches: int = 0
    withdrawn: int = 0  # keys the master got whose slave copy the KMs withdrew (link alarm)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    start: float | None = None  # seconds since the scenario's start
    end: float | None = None
    first_key_s: float | None = None  # since the pair's start, both applications hold it
    latencies: list[float] = field(default_factory=list)  # per request, first try -> both
    paths: list[list[str]] = field(default_factory=list)  # in order; more than one: re-routed

    @property
    def path(self) -> list[str] | None:
        return self.paths[-1] if self.paths else None

    @property
    def passed(self) -> bool:
        return self.state in ("ok", "refused")

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        # nearest-rank percentile: a value that was actually measured
        k = max(0, min(len(xs) - 1, int(-(-q * len(xs) // 1)) - 1))
        return xs[k]

    def as_dict(self) -> dict[str, Any]:
        r = {k: getattr(self, k) for k in (
            "name", "api", "src", "dst", "src_km", "dst_km", "user", "expect", "session_id",
            "state", "keys_wanted", "keys_matched", "mismatches", "withdrawn", "retries", "errors",
            "path", "paths")}
        r.update({
            "passed": self.passed,
            "start_s": _round(self.start), "end_s": _round(self.end),
            "first_key_s": _round(self.first_key_s),
            "latency_p50_s": _round(self.percentile(0.5)),
            "latency_p95_s": _round(self.percentile(0.95)),
            "latencies_s": [round(x, 4) for x in self.latencies],
        })
        return r


@dataclass
class FaultResult:
    fault: Fault
    applied_s: float | None = None
    ok: bool | None = None
    detail: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        f = self.fault
        return {"at": f.at, "action": f.action, "link": f.link, "node": f.node,
                "program": f.program, "fraction": f.fraction if f.action == "eve" else None,
                "what": f.describe(), "applied_s": _round(self.applied_s), "ok": self.ok,
                "detail": self.detail, "error": self.error}


@dataclass
class ScenarioResult:
    scenario: str
    lab: str
    started: float  # epoch
    duration: float
    pairs: list[PairResult]
    faults: list[FaultResult]

    @property
    def ok(self) -> bool:
        return (all(p.passed for p in self.pairs)
                and all(f.ok for f in self.faults))

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "lab": self.lab, "ok": self.ok,
                "started": self.started, "duration_s": round(self.duration, 3),
                "pairs": [p.as_dict() for p in self.pairs],
                "faults": [f.as_dict() for f in self.faults]}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


class _Refused(Exception):
    """The KM refused the pair for good (not a wait-and-retry answer)."""


class _TimedOut(Exception):
    pass


class ScenarioRunner:
    """Runs one scenario on one deployed lab (:class:`qkdtwin.labops.lab.DeployedLab`)."""

    def __init__(self, scenario: Scenario, lab: Any, lab_ref: str, *, log: Log = print,
                 injector: Any = None) -> None:
        self.sc = scenario
        self.lab = lab
        self.lab_ref = lab_ref
        self._log = log
        self._lock = threading.Lock()
        self.t0 = 0.0
        saes = lab.saes()
        self.results = {p.name: PairResult(
            p.name, p.api, p.src, p.dst, saes[p.src]["km"], saes[p.dst]["km"],
            saes[p.src].get("user", ""), p.expect, p.keys) for p in scenario.pairs}
        self.done = {p.name: threading.Event() for p in scenario.pairs}
        self.faults = [FaultResult(f) for f in scenario.faults]
        if injector is None and scenario.faults:
            injector = FaultInjector(lab)
        self.injector = injector

    # -- output --

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, text: str) -> None:
        with self._lock:
            self._log(f"[{self.now():6.1f}s] {text}")

    # -- the run --

    def run(self) -> ScenarioResult:
        for p in self.sc.pairs:  # certificates and KMs first: a clear error before any thread
            self.lab.sae_identity(p.src)
            self.lab.sae_identity(p.dst)
        started = time.time()
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._pair_thread, args=(p,), daemon=True,
                                    name=f"pair-{p.name}") for p in self.sc.pairs]
        if self.faults:
            threads.append(threading.Thread(target=self._fault_thread, daemon=True,
                                            name="faults"))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ScenarioResult(self.sc.name, self.lab.name, started, self.now(),
                              [self.results[p.name] for p in self.sc.pairs], self.faults)

    def _client(self, sae: str) -> SaeClient:
        cert, key = self.lab.sae_identity(sae)
        return SaeClient(self.lab.km_url(self.lab.sae_km(sae)), cert, key, self.lab.ca,
                         timeout=HTTP_TIMEOUT, sae_id=sae)

    def _sleep_until(self, t: float) -> None:
        while (left := t - self.now()) > 0:
            time.sleep(min(left, 0.5))

    def _fault_thread(self) -> None:
        for fr in self.faults:
            self._sleep_until(fr.fault.at)
            fr.applied_s = self.now()
            self.log(f"fault: {fr.fault.describe()}")
            try:
                fr.detail = self.injector.apply(fr.fault)
                fr.ok = True
                extra = ""
                if isinstance(fr.detail, dict) and "running_again_s" in fr.detail:
                    extra = f", running again after {fr.detail['running_again_s']:.1f} s"
                self.log(f"fault: {fr.fault.describe()} done ({self.now() - fr.applied_s:.1f} s"
                         f"{extra})")
            except UserError as exc:
                fr.ok, fr.error = False, str(exc)
                self.log(f"fault: {fr.fault.describe()} FAILED: {exc}")

    def _pair_thread(self, pair: Pair) -> None:
        res = self.results[pair.name]
        try:
            if pair.after is not None:
                self.done[pair.after].wait()
            self._sleep_until(pair.at)
            res.start = self.now()
            res.state = "running"
            self.log(f"{pair.name}: {pair.src} -> {pair.dst} (ETSI {pair.api}, {pair.keys} "
                     f"key(s) of {pair.size} bits, {res.src_km} -> {res.dst_km})")
            if pair.api == "014":
                self._run_014(pair, res)
            else:
                self._run_004(pair, res)
            res.state = "failed" if res.mismatches else "ok"
            if pair.expect == "refused":
                res.state = "failed"
                res.errors.append("expected the KM to refuse this pair, but it delivered keys")
        except _Refused as exc:
            if pair.expect == "refused" and res.keys_matched == 0:
                res.state = "refused"
                self.log(f"{pair.name}: refused as expected: {exc}")
            else:
                res.state = "failed"
                res.errors.append(str(exc))
        except _TimedOut as exc:
            res.state = "failed"
            res.errors.append(str(exc))
        except Exception as exc:  # a thread must never die silently: report it on the pair
            res.state = "failed"
            res.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            res.end = self.now()
            if res.state == "failed":
                self.log(f"{pair.name}: FAILED after {res.end - (res.start or res.end):.1f} s: "
                         f"{res.errors[-1] if res.errors else '?'}")
            elif res.state == "ok":
                self.log(f"{pair.name}: done, {res.keys_matched}/{res.keys_wanted} keys "
                         f"identical at both applications")
            self.done[pair.name].set()

    # -- helpers shared by both APIs --

    def _deadline(self, pair: Pair, res: PairResult) -> float:
        return (res.start or 0.0) + pair.timeout

    def _waiting(self, pair: Pair, res: PairResult, why: str, last_note: list[float]) -> None:
        """Count a retry and say so every WAIT_NOTE_EVERY seconds."""
        res.retries += 1
        if self.now() - last_note[0] >= WAIT_NOTE_EVERY:
            last_note[0] = self.now()
            short = why if len(why) <= 150 else why[:147] + "..."
            self.log(f"{pair.name}: waiting for key ({short}), {res.keys_matched}/{pair.keys} "
                     f"so far")

    def _got(self, pair: Pair, res: PairResult, t_req: float, n_same: int, n_diff: int) -> None:
        res.keys_matched += n_same
        res.mismatches += n_diff
        res.latencies.append(self.now() - t_req)
        if n_diff:
            res.errors.append(f"{n_diff} key(s) differ between {pair.src} and {pair.dst}")
            self.log(f"{pair.name}: MISMATCH: {n_diff} key(s) differ")
        if res.first_key_s is None and n_same:
            res.first_key_s = self.now() - (res.start or 0.0)
            self.log(f"{pair.name}: first key after {res.first_key_s:.2f} s")

    def _withdrawn(self, pair: Pair, res: PairResult, n: int, why: str) -> None:
        res.withdrawn += n
        self.log(f"{pair.name}: {n} key(s) withdrawn at {pair.dst} ({why}); the master's"
                 " copy is not to be used")

    # -- ETSI 014 --

    def _run_014(self, pair: Pair, res: PairResult) -> None:
        deadline = self._deadline(pair, res)
        note = [self.now()]
        with self._client(pair.src) as master, self._client(pair.dst) as slave:
            st = self._retry(pair, res, deadline, note, lambda: master.status(pair.dst),
                             retry_http=(503,))
            ext = st.body.get("status_extension")
            if isinstance(ext, dict) and ext.get("session_id"):
                res.session_id = str(ext["session_id"])
            left = pair.keys
            while left > 0:
                n = min(pair.per_request, left)
                t_req = self.now()
                r = self._retry(pair, res, deadline, note,
                                lambda n=n: master.enc_keys(pair.dst, n, pair.size,
                                                            pair.priority),
                                retry_http=(503,))
                keys = {k.get("key_ID"): k.get("key") for k in r.keys()}
                if len(keys) != n:
                    raise _Refused(f"asked for {n} key(s), the master got {len(keys)}")
                d = self._retry(pair, res, deadline, note,
                                lambda ids=list(keys): slave.dec_keys(pair.src, ids),
                                retry_http=(503,))
                if d.http == 400 and _withdrawn_ids(d):
                    # the KMs withdrew some (they crossed a link under alarm): fetch the rest
                    gone = _withdrawn_ids(d)
                    self._withdrawn(pair, res, len(gone), d.message)
                    rest = [kid for kid in keys if kid not in gone]
                    keys = {kid: keys[kid] for kid in rest}
                    d = self._retry(pair, res, deadline, note,
                                    lambda ids=rest: slave.dec_keys(pair.src, ids),
                                    retry_http=(503,)) if rest else d
                theirs = {k.get("key_ID"): k.get("key") for k in d.keys()}
                same = sum(1 for kid, v in keys.items() if theirs.get(kid) == v)
                self._got(pair, res, t_req, same, len(keys) - same)
                left -= len(keys)
                if left and pair.interval:
                    time.sleep(pair.interval)

    def _retry(self, pair: Pair, res: PairResult, deadline: float, note: list[float],
               call: Callable[[], KmResponse], retry_http: tuple[int, ...]) -> KmResponse:
        """Call until a success; 503 (no key yet, token bucket) and an unreachable KM (a
        restarting program) are retried until the pair's deadline, anything else refuses."""
        while True:
            try:
                r = call()
            except SaeError as exc:
                if not _unreachable(exc):
                    raise _Refused(str(exc)) from None
                why = f"KM unreachable: {exc}"
                pause = 1.0
            else:
                if r.ok or _withdrawn_ids(r):
                    return r
                if r.http not in retry_http and not _transient(r):
                    raise _Refused(f"HTTP {r.http}: {r.message or r.body}")
                why = f"HTTP {r.http} {r.message}".strip()
                pause = _retry_after(r) or 0.5
            if self.now() + pause > deadline:
                raise _TimedOut(f"no key within the pair's timeout ({pair.timeout:g} s), "
                                f"{res.keys_matched}/{pair.keys} keys; last answer: {why}")
            self._waiting(pair, res, why, note)
            time.sleep(pause)

    # -- ETSI 004 --

    def _run_004(self, pair: Pair, res: PairResult) -> None:
        deadline = self._deadline(pair, res)
        note = [self.now()]
        qos = dict(pair.qos)
        qos.setdefault("key_chunk_size", pair.size // 8)
        if pair.priority is not None:
            qos.setdefault("priority", pair.priority)
        stream = str(uuid.uuid4())
        res.session_id = stream
        with self._client(pair.src) as source, self._client(pair.dst) as dest:
            opened: dict[str, Any] = {}

            def open_dest() -> None:
                # the source application registers first, so its KM is the session's source
                # (the KM that creates the keys); not guaranteed on a very loaded host
                time.sleep(OPEN_STAGGER)
                try:
                    opened["dst"] = dest.open_connect(pair.src, pair.dst, qos, stream)
                except SaeError as exc:
                    opened["dst"] = exc

            t = threading.Thread(target=open_dest, daemon=True)
            t.start()
            try:
                r_src: Any = source.open_connect(pair.src, pair.dst, qos, stream)
            except SaeError as exc:
                r_src = exc
            t.join()
            try:
                for who, r in (("source", r_src), ("destination", opened.get("dst"))):
                    if isinstance(r, SaeError):
                        raise _Refused(f"OPEN_CONNECT by the {who} failed: {r}")
                    if r is None or not r.ok:
                        raise _Refused(f"OPEN_CONNECT by the {who} refused: status "
                                       f"{getattr(r, 'status', '?')} {getattr(r, 'message', '')}")
                while res.keys_matched + res.mismatches < pair.keys:
                    t_req = self.now()
                    mine = self._wait_004(pair, res, deadline, note,
                                          lambda s: source.wait_key(stream, timeout=s))
                    idx = mine.body.get("index")
                    theirs = self._wait_004(pair, res, deadline, note,
                                            lambda s, i=idx: dest.wait_key(stream, i,
                                                                           timeout=s))
                    if theirs.http == WITHDRAWN:
                        self._withdrawn(pair, res, 1, theirs.message)
                        continue
                    a, b = mine.body.get("key_buffer"), theirs.body.get("key_buffer")
                    same = 1 if a and a == b and theirs.body.get("index") == idx else 0
                    self._got(pair, res, t_req, same, 1 - same)
                    if pair.interval:
                        time.sleep(pair.interval)
            finally:
                for c in (source, dest):
                    try:
                        c.close(stream)
                    except SaeError:
                        pass  # the pair's outcome is already decided

    def _wait_004(self, pair: Pair, res: PairResult, deadline: float, note: list[float],
                  call: Callable[[float], KmResponse]) -> KmResponse:
        while True:
            step = max(0.5, min(10.0, deadline - self.now()))
            try:
                r = call(step)
            except SaeError as exc:
                if not _unreachable(exc):
                    raise _Refused(str(exc)) from None
                why, pause = f"KM unreachable: {exc}", 1.0
            else:
                if r.status == 0 or r.http == WITHDRAWN:
                    return r
                if r.status not in (2, 3, 9):
                    raise _Refused(f"GET_KEY status {r.status}: {r.message}")
                why, pause = f"status {r.status} {r.message}".strip(), 0.0
            if self.now() + pause >= deadline:
                raise _TimedOut(f"no key within the pair's timeout ({pair.timeout:g} s), "
                                f"{res.keys_matched}/{pair.keys} keys; last answer: {why}")
            self._waiting(pair, res, why, note)
            time.sleep(pause)


# ETSI 004 GET_KEY of an index the KMs withdrew (it crossed a link under a QBER alarm)
WITHDRAWN = 410


def _withdrawn_ids(r: KmResponse) -> set[str]:
    """ETSI 014 dec_keys refused because keys were withdrawn: their IDs (details)."""
    return {d["key_ID"] for d in r.body.get("details") or []
            if isinstance(d, dict) and d.get("withdrawn") and isinstance(d.get("key_ID"), str)}


# Refusals that say the control plane was too slow (a loaded host), not that the request is
# wrong or not allowed: asking again may succeed.
TRANSIENT = ("did not answer", "in time", "unreachable", "not reachable")


def _unreachable(exc: SaeError) -> bool:
    """No connection or no answer in time (a KM restarting), as opposed to a TLS failure or
    a non-API answer, which retrying does not cure."""
    text = str(exc)
    return "cannot reach the KM" in text or "did not answer within" in text


def _transient(r: KmResponse) -> bool:
    return r.http in (400, 503) and any(t in r.message for t in TRANSIENT)


def _retry_after(r: KmResponse) -> float | None:
    for d in r.body.get("details") or []:
        if isinstance(d, dict) and isinstance(d.get("retry_after_s"), int | float):
            return min(float(d["retry_after_s"]), 5.0)
    return None


def paths_from_events(lab_dir: Any, session_ids: list[str], since: float,
                      wait: float = 1.0) -> dict[str, list[list[str]]]:
    """The paths each session took from ``since`` on, in order, as the recorder saw them
    (admission's ``path_assigned``/``session_rerouted``, else the KMs' configurations): the
    path it had at ``since`` (a session opened earlier keeps its path) and every change after.
    Sessions not found are left out. ``wait`` lets the recorder write the last events."""
    events_dir = lab_dir / "events"
    if not events_dir.is_dir() or not session_ids:
        return {}
    time.sleep(wait)
    wanted = set(session_ids)
    try:
        events = [e for e in load_events(events_dir) if e.session_id in wanted]
    except UserError:
        return {}
    sessions = fold_sessions(events).sessions.values()
    out = {s.id: changes for s in sessions if (changes := s.path_changes(since))}
    for s in sessions:  # no admission events: the path of the KMs' forwarding entries
        path = s.timeline_view(0.0)["path"]
        if s.id not in out and path:
            out[s.id] = [path]
    return out
