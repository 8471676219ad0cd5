"""The chaos soak's invariant checker (qkdtwin.chaos.invariants): clean records give no
violation, and each kind of violation fed in synthetically is found — so the checker of
benchmarks/soak.py cannot pass silently."""

from __future__ import annotations

import dataclasses

import pytest

from qkdtwin.chaos.invariants import (
    INVARIANTS,
    AlarmMsg,
    AppKey,
    KmDelivery,
    KmSession,
    KmWithdrawal,
    Records,
    check,
    compromise_intervals,
)

pytestmark = pytest.mark.unit

T = 1_000_000.0  # an epoch second
LINK = "km0-km1"


def _key(kid: str, end: str, digest: str, t: float, api: str = "014",
         pair: str = "014 sae-0>sae-1") -> AppKey:
    sae = "sae-0" if end == "a" else "sae-1"
    return AppKey(pair, api, kid, end, sae, digest, t, t + 0.01)


def clean() -> Records:
    """Two 014 keys and one 004 key over km0-km1, all before an Eve alarm on that link (raised
    at T+100, cleared at T+150); one key relayed after the clear; a closed stream gone from
    the KMs; an ETSI 014 session still OPERATIVE (it ends by its idle timeout)."""
    rec = Records()
    for i, t in enumerate((T + 10, T + 20, T + 160)):
        kid = f"k{i}"
        rec.app_keys += [_key(kid, "a", f"d{i}", t), _key(kid, "b", f"d{i}", t + 0.1)]
        rec.deliveries.append(KmDelivery("km1", kid, "dst", "s014", "sae-1", t + 0.1, (LINK,)))
        rec.arrivals[kid] = t - 1
    sid = "stream-1"
    rec.app_keys += [_key(f"{sid}:0", "a", "e0", T + 30, "004", "004 sae-0>sae-1"),
                     _key(f"{sid}:0", "b", "e0", T + 30.2, "004", "004 sae-0>sae-1")]
    rec.deliveries += [KmDelivery("km0", f"{sid}:0", "src", sid, "sae-0", T + 30, (LINK,)),
                       KmDelivery("km1", f"{sid}:0", "dst", sid, "sae-1", T + 30.2, (LINK,))]
    rec.arrivals[f"{sid}:0"] = T + 29
    # a key the master got just before the alarm; the slave was told it was withdrawn
    rec.app_keys.append(_key("k9", "a", "d9", T + 99))
    rec.withdrawals.append(KmWithdrawal("km1", "k9", "dst", "s014", LINK, "qber_high",
                                        T + 100, T + 100.2))
    rec.alarms += [AlarmMsg(LINK, "qber_high", T + 100), AlarmMsg(LINK, "qber_high", T + 110),
                   AlarmMsg(LINK, "clear", T + 150), AlarmMsg("km0-km2", "link_down", T + 5),
                   AlarmMsg("km0-km2", "clear", T + 40)]
    rec.streams_closed.add(sid)
    rec.sessions_left += [KmSession("km0", "s014", "014", "OPERATIVE"),
                          # a store's row says KEY_EXCHANGING; the KM's live count does not
                          KmSession("km0", "s014b", "014", "KEY_EXCHANGING", live=False)]
    return rec


def test_clean_records_have_no_violation():
    v = check(clean())
    assert v.ok, v.as_dict()
    assert v.counts == dict.fromkeys(INVARIANTS, 0)
    assert v.stats["keys_matched"] == 4
    assert v.stats["keys_only_first_end_withdrawn"] == 1
    assert v.as_dict()["examples"] == {}


def only(v, invariant: str) -> list[dict]:
    """The violations found, asserting they are all of ``invariant``."""
    assert not v.ok
    assert {k for k, n in v.counts.items() if n} == {invariant}, v.counts
    return v.violations[invariant]


def test_different_values_at_the_two_ends():
    rec = clean()
    rec.app_keys[1] = dataclasses.replace(rec.app_keys[1], digest="other")
    (found,) = only(check(rec), "identical")
    assert found["key_id"] == "k0"


def test_key_reaching_another_pairs_application():
    rec = clean()
    rec.app_keys[1] = dataclasses.replace(rec.app_keys[1], pair="014 sae-2>sae-3")
    (found,) = only(check(rec), "identical")
    assert "another pair" in found["detail"]


def test_key_id_received_twice():
    rec = clean()
    rec.app_keys.append(rec.app_keys[1])
    (found,) = only(check(rec), "delivered_once")
    assert found["key_id"] == "k0"


def test_same_value_under_two_key_ids():
    rec = clean()
    rec.app_keys += [_key("k5", "a", "d0", T + 40), _key("k5", "b", "d0", T + 40.1)]
    rec.deliveries.append(KmDelivery("km1", "k5", "dst", "s014", "sae-1", T + 40.1, (LINK,)))
    (found,) = only(check(rec), "delivered_once")
    assert found["key_ids"] == ["k0", "k5"]


def test_same_key_delivered_by_two_kms():
    rec = clean()
    rec.deliveries.append(dataclasses.replace(rec.deliveries[0], km="km3"))
    (found,) = only(check(rec), "delivered_once")
    assert found["kms"] == ["km1", "km3"]


def test_delivery_during_the_alarm():
    rec = clean()
    rec.deliveries.append(KmDelivery("km1", "late", "dst", "s014", "sae-1", T + 120, (LINK,)))
    rec.arrivals["late"] = T + 50
    (found,) = only(check(rec), "after_alarm")
    assert (found["key_id"], found["link"]) == ("late", LINK)


def test_key_held_through_the_alarm_and_delivered_after_the_clear():
    rec = clean()
    # arrived before the alarm, never withdrawn, delivered once the link was clear again
    rec.deliveries.append(KmDelivery("km1", "held", "dst", "s014", "sae-1", T + 170,
                                     ("km0-km3", LINK)))
    rec.arrivals["held"] = T + 90
    (found,) = only(check(rec), "after_alarm")
    assert found["key_id"] == "held" and found["alarm_cleared"] == T + 150


def test_master_copy_handed_out_after_the_alarm():
    rec = clean()
    # the slave's copy was withdrawn at the alarm; the master still got its copy later
    rec.app_keys.append(_key("k8", "a", "d8", T + 130))
    rec.withdrawals.append(KmWithdrawal("km1", "k8", "dst", "s014", LINK, "qber_high",
                                        T + 100, T + 100.2))
    (found,) = only(check(rec), "after_alarm")
    assert found["key_id"] == "k8" and "master" in found["at"]


def test_within_grace_is_counted_not_violated():
    rec = clean()
    rec.deliveries.append(KmDelivery("km1", "race", "dst", "s014", "sae-1", T + 101, (LINK,)))
    rec.arrivals["race"] = T + 95
    v = check(rec, grace_s=2.0)
    assert v.ok and v.stats["after_alarm_within_grace"] == 1
    assert not check(rec, grace_s=0.5).ok


def test_link_down_withdraws_nothing():
    rec = clean()
    rec.deliveries.append(KmDelivery("km2", "cut", "dst", "s", "sae-2", T + 20, ("km0-km2",)))
    rec.arrivals["cut"] = T + 1
    assert check(rec).ok


def test_closed_stream_still_held():
    rec = clean()
    rec.sessions_left.append(KmSession("km1", "stream-1", "004", "OPERATIVE"))
    (found,) = only(check(rec), "session_stuck")
    assert found["session_id"] == "stream-1"


def test_session_waiting_for_admission():
    rec = clean()
    rec.sessions_left.append(KmSession("km4", "s2", "014", "USER_ACCEPTED"))
    only(check(rec), "session_stuck")


def test_request_that_never_returned():
    rec = clean()
    rec.unfinished.append("app 004 sae-2>sae-3")
    (found,) = only(check(rec), "session_stuck")
    assert found["thread"] == "app 004 sae-2>sae-3"


def test_process_left_after_teardown():
    rec = clean()
    rec.leftovers += ["namespace clab-soak6-km0", "process 4242: mosquitto -c ..."]
    v = check(rec)
    assert len(only(v, "process_leaked")) == 2 and v.counts["process_leaked"] == 2


def test_compromise_spans():
    spans = compromise_intervals([
        AlarmMsg("l", "qber_suspicious", 10), AlarmMsg("l", "link_down", 12),
        AlarmMsg("l", "clear", 20), AlarmMsg("l", "clear", 21),
        AlarmMsg("l", "qber_high", 30), AlarmMsg("m", "link_down", 5)])
    assert spans == {"l": [(10, 20), (30, float("inf"))]}
