"""The control plane on a deployed star6 (`deployed_star6`, tests/support/deployed.py): every
element on its own node, real Key Managers and QKD modules, applications on the host talking
ETSI 004/014 with their lab certificates, events watched on the lab's broker.

star6: km0 is the hub (km0–km1 … km0–km5), plus km4–km5. Users (labs/star6.users.yml): ops
sae-0@km0/sae-1@km1, research sae-2@km2/sae-3@km3, iot sae-4@km4/sae-5@km5 (max priority 2,
4096 bit/s, 256-bit keys, only to each other), mallory sae-9@km5 (disabled).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from tests.support.lab_events import LabEvents

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 32  # bytes: 256 bits, within every star6 SLA
KEY_WAIT_S = 120.0  # the first keys of a link after the deploy can take this long
HEALTH_PORTS = {"access": 9101, "admission": 9102, "routing": 9103, "monitor": 9105}


@pytest.fixture(scope="module")
def lab(deployed_star6):
    from qkdtwin.labops.lab import DeployedLab

    return DeployedLab.load(deployed_star6.lab.path)


@pytest.fixture(scope="module")
def events(lab) -> Iterator[LabEvents]:
    ev = LabEvents(lab).start()
    yield ev
    ev.stop()


@pytest.fixture(scope="module")
def sae(lab) -> Callable[[str], Any]:
    """sae("sae-2") → a keep-alive SaeClient of that application towards its own KM."""
    from qkdtwin.sae.client import SaeClient

    clients: dict[str, Any] = {}

    def get(sae_id: str):
        if sae_id not in clients:
            cert, key = lab.sae_identity(sae_id)
            clients[sae_id] = SaeClient(lab.km_url(lab.sae_km(sae_id)), cert, key, lab.ca,
                                        timeout=60)
        return clients[sae_id]
    yield get
    for c in clients.values():
        c.close_connection()


def open_pair(sae, a: str, b: str, qos: dict[str, Any] | None = None) -> str:
    """Both applications open the same key stream (ETSI 004): its id."""
    sid = str(uuid.uuid4())
    qos = {"key_chunk_size": CHUNK, "timeout": 5000, **(qos or {})}
    # OPEN_CONNECT blocks up to qos.timeout for the peer: the first side waits only briefly
    r = sae(a).open_connect(a, b, {**qos, "timeout": 300}, key_stream_id=sid)
    assert r.http == 200 and r.status in (0, 1), r.body
    r = sae(b).open_connect(b, a, qos, key_stream_id=sid)
    assert r.http == 200 and r.status == 0, r.body
    return sid


def same_chunk(sae, a: str, b: str, sid: str, timeout: float = KEY_WAIT_S) -> tuple[int, str]:
    """The next chunk at ``a`` and the chunk of the same index at ``b``: identical."""
    r = sae(a).wait_key(sid, timeout=timeout)
    assert r.status == 0, r.body
    idx, key = r.body["index"], r.body["key_buffer"]
    r2 = sae(b).wait_key(sid, index=idx, timeout=timeout)
    assert r2.status == 0 and r2.body["key_buffer"] == key, (idx, r2.body)
    return idx, key


def routing_view(lab) -> dict[str, Any]:
    """The Routing Element's topology database, asked over the bus like admission does."""
    from qkdtwin import bus
    from qkdtwin.bus import Bus

    b = Bus(lab.broker_config(), f"host-view-{uuid.uuid4().hex[:6]}", workers=1).start()
    try:
        return b.request(bus.ROUTING_IN, {"type": "topology_view"}, timeout=10)
    finally:
        b.stop()


def closed_everywhere(events: LabEvents, sid: str, route: list[str], timeout: float = 30.0):
    """Admission ended ``sid`` and every KM of ``route`` deleted and confirmed it."""
    events.wait(lambda e: e.get("session_id") == sid and e.get("kind") == "session_terminated",
                timeout, f"session_terminated of {sid}")
    deleted = {e["element"] for e in events.of(sid, "session_deleted")}
    confirmed = {e["km"] for e in events.of(sid, "deletion_confirmed")}
    assert set(route) <= deleted, (route, deleted)
    assert set(route) <= confirmed, (route, confirmed)
    (end,) = events.of(sid, "session_terminated")
    assert not end.get("unconfirmed"), end


@pytest.fixture(scope="module")
def lonely(sae, events):
    """A key stream whose peer never registers, opened first so that admission's peer wait
    (60 s, admission_control_peer_wait_s) runs out while the other tests run."""
    sid = str(uuid.uuid4())
    r = sae("sae-0").open_connect("sae-0", "sae-1", {"key_chunk_size": CHUNK, "timeout": 500},
                                  key_stream_id=sid)
    assert r.http == 200 and r.status == 1, r.body  # waiting for the peer
    return sid, time.time()


def test_paper_scenario_three_sessions_in_parallel(lab, sae, events, lonely):
    """km0–km1, km2–km3 and km4–km5 ask at the same moment: three sessions, identical keys at
    both ends, km2–km3 through km0; closing one side deletes each session on its whole route."""
    pairs = [("sae-0", "sae-1"), ("sae-2", "sae-3"), ("sae-4", "sae-5")]
    sids: dict[tuple[str, str], str] = {}
    errors: list[BaseException] = []

    def run(a: str, b: str) -> None:
        try:
            sid = open_pair(sae, a, b)
            sids[(a, b)] = sid
            for _ in range(3):
                same_chunk(sae, a, b, sid)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(KEY_WAIT_S + 60)
    assert not errors, errors
    paths = {p: events.path_of(sids[p]) for p in pairs}
    assert paths[("sae-0", "sae-1")] == ["km0", "km1"]
    # km2 and km3 have no link of their own and km0 is their only neighbour: the one path
    graph = nx.Graph([(lk["a"], lk["b"]) for lk in routing_view(lab)["links"]])
    assert [list(p) for p in nx.all_simple_paths(graph, "km2", "km3")] == [["km2", "km0", "km3"]]
    assert paths[("sae-2", "sae-3")] == ["km2", "km0", "km3"]
    assert paths[("sae-4", "sae-5")][0] == "km4" and paths[("sae-4", "sae-5")][-1] == "km5"
    # the relayed session crossed km0 (transit) in the key managers' own events
    relay = sids[("sae-2", "sae-3")]
    assert events.of(relay, "relay_forward") and \
        {e["element"] for e in events.of(relay, "relay_forward")} == {"km0"}
    for (a, b), sid in sids.items():
        assert sae(b).close(sid).status == 0  # one side closes: the whole route is cleaned
        closed_everywhere(events, sid, paths[(a, b)])
    r = sae("sae-2").get_key(relay)
    assert r.status == 4, r.body  # the other application sees the stream closed
    save_recording(lab, relay)


def save_recording(lab, sid: str) -> None:
    """QKDTWIN_UPDATE_DOCS=1: keep the lab recorder's events of the relayed session as
    tests/data/events/star6-relayed.jsonl, the source of docs/architecture.md's message
    sequence (tests/unit/test_docs_sequence.py keeps the two in step)."""
    if not os.environ.get("QKDTWIN_UPDATE_DOCS"):
        return
    time.sleep(2)  # the recorder writes what it received
    files = sorted((lab.lab_dir / "events").glob("*.jsonl"))
    assert files, "the lab's recorder wrote nothing"
    lines = [line for line in files[-1].read_text().splitlines()
             if json.loads(line).get("payload", {}).get("session_id") == sid]
    assert lines
    out = ROOT / "tests" / "data" / "events" / "star6-relayed.jsonl"
    out.write_text("\n".join(lines) + "\n")


def test_sessions_over_the_sla_are_refused(lab, sae, events):
    """iot's SLA: priority <= 2, 256-bit keys, only sae-4 <-> sae-5. Over it: ETSI 004 status
    7 with admission's counter-proposal, nothing configured on any KM; a disabled user is
    refused by access control."""
    sid = str(uuid.uuid4())
    r = sae("sae-4").open_connect("sae-4", "sae-5", {"key_chunk_size": 64, "priority": 5,
                                                     "timeout": 5000}, key_stream_id=sid)
    assert r.status == 7, r.body
    counter = r.body.get("qos") or {}
    assert counter.get("key_chunk_size") == 32 and counter.get("priority") == 2, r.body
    rejected = events.wait(lambda e: e.get("session_id") == sid
                           and e.get("kind") == "session_rejected", 10, "session_rejected")
    assert "exceeds SLA" in rejected[0]["reason"]
    # a destination the SLA does not allow
    r = sae("sae-4").open_connect("sae-4", "sae-0", {"key_chunk_size": CHUNK, "timeout": 5000})
    assert not r.ok and r.status in (4, 7), r.body
    assert "not allowed" in r.message, r.body
    # ETSI 014 over the SLA's key size
    r = sae("sae-4").enc_keys("sae-5", number=1, size=512)
    assert r.http == 400 and r.message, r.body
    # mallory is disabled in access control
    r = sae("sae-9").enc_keys("sae-5", number=1, size=128)
    assert r.http == 401 and "disabled" in r.message, r.body
    time.sleep(1)
    assert not events.of(sid, "config_sent") and not events.of(sid, "path_assigned")


def test_broker_restart_loses_no_session(lab, deployed_star6, sae, events):
    """Mosquitto restarted in the middle of a relayed session: keys keep coming, every element
    reconnects, and a close afterwards still deletes the session on its whole route."""
    sid = open_pair(sae, "sae-2", "sae-3")
    same_chunk(sae, "sae-2", "sae-3", sid)
    route = events.path_of(sid)
    python = deployed_star6.all_vars["qkdtwin_python"]
    (broker,) = deployed_star6.nodes_with_role("broker")
    out = deployed_star6.host(broker).check_output(
        f"{python} -m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf "
        "restart mosquitto")
    assert "started" in out, out
    restarted = time.time()
    for _ in range(3):  # the KMs relay over HTTPS: the broker is not on the key path
        same_chunk(sae, "sae-2", "sae-3", sid)
    # every KM of the route and every element is connected again: the KMs' events of new
    # deliveries arrive (those of the first moments may have gone while this test's own
    # client was reconnecting)
    deadline = time.monotonic() + 60
    while not events.where(lambda e: e["_rx"] > restarted + 1 and e.get("session_id") == sid
                           and e.get("kind") == "keys_delivered"):
        assert time.monotonic() < deadline, "no KM event of the session after the restart"
        same_chunk(sae, "sae-2", "sae-3", sid)
        time.sleep(1)
    for role, port in HEALTH_PORTS.items():
        node = deployed_star6.nodes_with_role(role)[0]
        deadline = time.monotonic() + 60
        while True:
            health = json.loads(deployed_star6.host(node).check_output(
                f"curl -sf http://127.0.0.1:{port}/healthz"))
            if health.get("broker_connected") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health.get("broker_connected"), (node, health)
    assert sae("sae-3").close(sid).status == 0
    closed_everywhere(events, sid, route, timeout=60)


def link_id(a: str, b: str) -> str:
    return "-".join(sorted((a, b), key=lambda n: int(n[2:])))


def links_of(path: list[str]) -> set[str]:
    return {link_id(a, b) for a, b in zip(path, path[1:], strict=False)}


def test_eavesdropper_on_a_link_in_use_reroutes_with_no_key_from_it(
        lab, deployed_star6, sae, events):
    """Eve on the first link of a live ETSI 004 stream sae-4 → sae-5: monitoring raises the
    alarm, admission moves the stream to another path, both applications keep getting the
    same chunks under the same key_stream_id, and no chunk handed out after the alarm crossed
    the compromised link (the destination KM's relay_receive events name each chunk's route)."""
    from qkdtwin.cli import main

    sid = open_pair(sae, "sae-4", "sae-5")
    same_chunk(sae, "sae-4", "sae-5", sid)
    old_path = events.path_of(sid)
    link = link_id(*old_path[:2])
    got: list[tuple[float, int]] = []  # (request sent, index) of chunks equal at both ends
    withdrawn: list[int] = []  # chunks sae-4 had before the alarm, withdrawn at sae-5's KM
    errors: list[BaseException] = []
    stop = threading.Event()

    def pull() -> None:
        while not stop.is_set():
            t0 = time.time()
            try:
                r = sae("sae-4").wait_key(sid, timeout=90)
                assert r.status == 0, r.body
                idx, key = r.body["index"], r.body["key_buffer"]
                r2 = sae("sae-5").wait_key(sid, index=idx, timeout=90)
                if r2.http == 410:  # docs/api.md: the peer's copy of a chunk that crossed
                    assert r2.status == 10 and f"crossed link {link}" in r2.message, r2.body
                    withdrawn.append(idx)
                    continue
                assert r2.status == 0 and r2.body["key_buffer"] == key, (idx, r2.body)
            except BaseException as exc:  # reported below
                errors.append(exc)
                return
            got.append((t0, idx))
            time.sleep(0.25)

    puller = threading.Thread(target=pull)
    puller.start()
    eve_on = False
    try:
        assert main(["eve", str(deployed_star6.lab.path),
                     link.replace("-", ":"), "--fraction", "1"]) == 0
        eve_on = True
        alarm = events.wait(lambda e: e["_topic"] == f"qkd/v1/alarm/{link}" and e.get("kind")
                            in ("qber_high", "qber_suspicious"), 150, f"an alarm on {link}")[0]
        moved = events.wait(lambda e: e.get("session_id") == sid
                            and e.get("kind") == "session_rerouted", 60, "the re-route")[0]
        assert moved["link"] == link and link not in links_of(moved["path"]), moved
        assert moved["path"][0] == "km4" and moved["path"][-1] == "km5"
        deadline = time.monotonic() + 90  # chunks keep coming over the new path
        while time.monotonic() < deadline and not errors and \
                sum(1 for t, _ in got if t > alarm["_rx"]) < 5:
            time.sleep(0.2)
    finally:
        stop.set()
        puller.join(120)
        if eve_on:  # leave the lab as found
            assert main(["eve", str(deployed_star6.lab.path),
                         link.replace("-", ":"), "--off"]) == 0
        if errors:  # free the user's session slot (SLA max_sessions) for the later tests
            sae("sae-5").close(sid)
    assert not errors, errors
    # a withdrawn chunk is one the destination KM withdrew for the compromised link
    named = {i for e in events.of(sid, "keys_withdrawn") if e["element"] == "km5"
             and e["link"] == link for i in e.get("indexes") or []}
    assert set(withdrawn) <= named, (withdrawn, named)
    after = [idx for t, idx in got if t > alarm["_rx"]]
    assert len(after) >= 5, (len(got), after)
    routes: dict[int, list[str]] = {}
    for e in events.of(sid, "relay_receive"):
        for i in e.get("indexes") or []:
            routes[i] = e["route"]
    for idx in after:
        assert idx in routes, f"no relay_receive event names chunk {idx}"
        assert link not in routes[idx], (idx, routes[idx], link)
    print(f"alarm {alarm['kind']} on {link}; path {old_path} -> {moved['path']}; "
          f"{len(got)} chunks equal at both ends, {len(after)} after the alarm; withdrawn: "
          f"{sum(e.get('count', 0) for e in events.of(sid, 'keys_withdrawn'))} "
          f"(of them already at sae-4: {withdrawn})")
    # the stream closes everywhere, the link clears once Eve has gone
    assert sae("sae-5").close(sid).status == 0
    closed_everywhere(events, sid, moved["path"], timeout=60)
    events.wait(lambda e: e["_topic"] == f"qkd/v1/alarm/{link}" and e.get("kind") == "clear",
                150, f"the alarm on {link} to clear")


def test_peer_that_never_registers_reserves_nothing_and_times_out(lab, sae, events, lonely):
    """Opened first in this module (fixture `lonely`): admission accepted it, waited for
    sae-1, never asked routing for a path, and after its peer wait ended it on km0."""
    sid, opened = lonely
    accepted = events.wait(lambda e: e.get("session_id") == sid
                           and e.get("kind") == "session_accepted", 10, "session_accepted")
    assert accepted[0]["waiting_for_peer"] is True
    assert sid not in routing_view(lab)["reservations"]
    timeout = 60 + 15 - (time.time() - opened)
    events.wait(lambda e: e.get("session_id") == sid and e.get("kind") == "session_terminated",
                max(timeout, 5), f"the end of the lonely session {sid}")
    assert events.of(sid, "session_timeout"), [e["kind"] for e in events.of(sid)]
    assert not events.of(sid, "path_computed") and not events.of(sid, "config_sent")
    assert {e["km"] for e in events.of(sid, "deletion_sent")} == {"km0"}
    assert sid not in routing_view(lab)["reservations"]
    r = sae("sae-0").get_key(sid)
    assert r.status == 4, r.body
