"""The one fold of events into sessions (qkdtwin.session_fold) and its three views: the
dashboard's live sessions, the timeline's session table, the scenario runner's paths."""

from __future__ import annotations

import pytest

from qkdtwin.events import Event, fold_sessions
from qkdtwin.session_fold import SessionFold, path_from_hops

pytestmark = pytest.mark.unit


def feed(fold: SessionFold, element: str, kind: str, sid: str, ts: float, **fields):
    return fold.feed(sid, kind, element, ts, {"type": "event", "ts": ts, "element": element,
                                              "kind": kind, "session_id": sid, **fields})


def relayed(fold: SessionFold) -> None:
    """A relayed session km0 -> km1 -> km2, re-routed to km0 -> km2, then closed."""
    feed(fold, "km0", "session_request", "s", 1.0, sae_id="a", peer_sae_id="b", api="004")
    feed(fold, "admission", "config_request_received", "s", 1.1, sae_id="a", peer_sae_id="b")
    feed(fold, "admission", "session_accepted", "s", 1.2, user="u", api="004")
    feed(fold, "routing", "path_computed", "s", 1.3, path=["km0", "km1", "km2"])
    feed(fold, "admission", "path_assigned", "s", 1.4, path=["km0", "km1", "km2"],
         links=["km0-km1", "km1-km2"])
    for km, role, nxt in (("km0", "source", "km1"), ("km1", "transit", "km2"),
                          ("km2", "destination", None)):
        feed(fold, km, "session_configured", "s", 1.5, role=role, next_hop=nxt)
    feed(fold, "km0", "keys_delivered", "s", 2.0, number=2)
    feed(fold, "km2", "keys_delivered", "s", 2.1, number=2, side="slave")
    feed(fold, "admission", "session_rerouted", "s", 3.0, old_path=["km0", "km1", "km2"],
         path=["km0", "km2"], links=["km0-km2"], link="km1-km2")
    feed(fold, "admission", "session_terminated", "s", 4.0, reason="closed")


def test_path_from_hops_follows_next_hops_from_the_source():
    assert path_from_hops({"km1": {"role": "transit", "next_hop": "km2"},
                           "km0": {"role": "source", "next_hop": "km1"}, "km2": {}}) == [
        "km0", "km1", "km2"]
    assert path_from_hops({"km1": {"role": "transit", "next_hop": "km2"}}) is None
    loop = {"km0": {"role": "source", "next_hop": "km1"}, "km1": {"next_hop": "km0"}}
    assert path_from_hops(loop) == ["km0", "km1"]


def test_one_record_gives_the_three_views():
    fold = SessionFold()
    relayed(fold)
    (s,) = fold.sessions.values()
    live = s.live_view()
    assert live["saes"] == ["a", "b"] and live["user"] == "u" and live["api"] == "004"
    assert live["path"] == ["km0", "km2"] and live["old_path"] == ["km0", "km1", "km2"]
    assert live["reroutes"] == 1 and live["reroute_link"] == "km1-km2"
    assert live["keys"] == 2 and live["state"] == "terminated" and live["ended"] == 4.0
    assert "path_from_kms" not in live  # admission named the path
    tl = s.timeline_view(t0=1.0)
    assert tl == {"first": 0.0, "last": 3.0, "path": ["km0", "km2"], "saes": ["a", "b"],
                  "api": "004", "keys": 2}
    assert s.path_changes(since=0.0) == [["km0", "km1", "km2"], ["km0", "km2"]]
    assert s.path_changes(since=2.5) == [["km0", "km1", "km2"], ["km0", "km2"]]
    assert s.path_changes(since=3.5) == [["km0", "km2"]]  # only the path it had then


def test_paths_from_the_kms_entries_and_their_reroute():
    fold = SessionFold(live=True)
    feed(fold, "km0", "session_configured", "k", 1.0, role="source", next_hop="km1")
    feed(fold, "km1", "session_configured", "k", 1.1, role="destination")
    live = fold.sessions["k"].live_view()
    assert live["path"] == ["km0", "km1"] and live["path_from_kms"] is True
    assert live["state"] == "active" and live["reroutes"] == 0
    feed(fold, "km0", "forwarding_update", "k", 2.0, role="source", next_hop="km2")
    feed(fold, "km2", "forwarding_update", "k", 2.1, role="transit", next_hop="km1")
    live = fold.sessions["k"].live_view()
    assert live["path"] == ["km0", "km2", "km1"] and live["reroutes"] == 2
    assert fold.sessions["k"].path_changes(since=0.0) == []  # no admission events


def test_live_view_opens_sessions_only_at_their_start_and_reopens_a_repeated_id():
    fold = SessionFold(live=True)
    assert feed(fold, "km0", "keys_delivered", "late", 1.0) is None  # never saw it open
    assert "late" not in fold.sessions
    relayed(fold)
    assert fold.sessions["s"].has_ended
    # ETSI 014 ids repeat for the same SAE pair: a new request after the end is a new session
    again = feed(fold, "km0", "session_request", "s", 10.0, sae_id="a", peer_sae_id="b")
    assert again is fold.sessions["s"] and again.started == 10.0 and again.state == "requested"
    assert again.keys == 0 and again.path is None and not again.has_ended
    fold.forget("s")
    assert not fold.sessions


def test_recorded_view_keeps_every_event_of_an_id():
    fold = SessionFold()
    assert feed(fold, "km0", "keys_delivered", "late", 1.0, number=3) is not None
    relayed(fold)
    feed(fold, "km0", "session_request", "s", 10.0, sae_id="c", peer_sae_id="d")
    s = fold.sessions["s"]
    assert s.started == 1.0 and s.updated == 10.0
    assert s.timeline_view(0.0)["saes"] == ["a", "b"]  # the first request of the id
    assert fold.sessions["late"].timeline_view(0.0)["keys"] == 3


def test_fold_sessions_of_recorded_events_skips_events_without_a_session():
    evs = [Event(1.0, "qkd/v1/events/km0", {"kind": "session_request", "session_id": "x",
                                            "sae_id": "a", "peer_sae_id": "b"}),
           Event(1.5, "qkd/v1/alarm/km0-km1", {"kind": "qber_high", "link": "km0-km1"}),
           Event(2.0, "qkd/v1/events/km0", {"kind": "session_state", "session_id": ""})]
    fold = fold_sessions(evs)
    assert list(fold.sessions) == ["x"]
    assert fold.sessions["x"].timeline_view(1.0)["saes"] == ["a", "b"]
