"""qkdtwin.messages: encoding, and every reason decoding refuses a payload for."""

from __future__ import annotations

import json

import pytest

from qkdtwin import messages as m
from qkdtwin.messages import BadMessage, SessionConfig, SessionDelete, decode, decode_any

pytestmark = pytest.mark.unit


def config(**over) -> dict:
    body = SessionConfig(session_id="s1", role="source", prev_hop=None, next_hop="km1",
                         priority=3, bucket={"size_bits": 10, "rate_bps": 5}, timeout_s=60,
                         local_sae_id="sae-0", peer_sae_id="sae-1", peer_km="km1", user="u",
                         update=False).to_payload()
    body.update(over)
    return body


def refused(payload, cls=SessionConfig) -> str:
    with pytest.raises(BadMessage) as exc:
        decode(payload, cls)
    return exc.value.reason


def test_round_trip_through_bytes_str_and_dict():
    body = config(api="004", qos={"min_bps": 1})
    for form in (body, json.dumps(body), json.dumps(body).encode()):
        msg = decode(form, SessionConfig)
        assert msg.to_payload() == body
    assert body["type"] == "session_config" and body["v"] == m.SCHEMA_VERSION


def test_optional_none_fields_stay_off_the_wire():
    assert "counter_qos" not in SessionDelete(session_id="s", reason="closed").to_payload()
    d = SessionDelete(session_id="s", reason="sla", counter_qos={"max_bps": 1}).to_payload()
    assert d["counter_qos"] == {"max_bps": 1}


def test_unknown_keys_are_kept():
    msg = decode(config(hint="x"), SessionConfig)
    assert msg.extra == {"hint": "x"} and msg.to_payload()["hint"] == "x"


def test_an_int_is_a_number_and_becomes_a_float():
    assert decode(config(timeout_s=60), SessionConfig).timeout_s == 60.0


def test_not_json():
    assert refused(b"{not json").startswith("not JSON")


def test_not_an_object():
    assert "not a JSON object" in refused(b"[1, 2]")
    assert "not a JSON object" in refused("42")


def test_wrong_type():
    assert "where 'session_config' was expected" in refused(config(type="session_delete"))
    assert "where 'session_config' was expected" in refused(config(type=None))


def test_missing_field():
    body = config()
    del body["role"]
    assert refused(body) == "session_config: missing field 'role'"


def test_field_of_the_wrong_type():
    assert "field 'priority' must be an integer" in refused(config(priority="high"))
    assert "field 'priority'" in refused(config(priority=True))  # a bool is not a number
    assert "field 'prev_hop' must be a string or null" in refused(config(prev_hop=3))
    assert "field 'bucket' must be an object" in refused(config(bucket=[1]))


def test_unknown_or_bad_version():
    assert refused(config(v=2)).startswith("unknown schema version 2")
    assert refused(config(v="1")).startswith("unknown schema version")
    assert refused(config(v=True)).startswith("unknown schema version")


def test_a_payload_without_version_is_version_1():
    body = config()
    del body["v"]
    assert decode(body, SessionConfig).v == 1


def test_oversized_payload_is_refused_before_parsing():
    garbage = b"\x00" * (1 << 20)
    assert "over the limit" in refused(garbage)
    big_but_valid = json.dumps(config(pad="x" * (m.MAX_PAYLOAD_BYTES + 1)))
    assert "over the limit" in refused(big_but_valid)


def test_not_bytes_at_all():
    assert refused(12345).startswith("payload of type int")


def test_decode_any_dispatches_on_type():
    msg = decode_any({"type": "key_request", "km": "km0", "session_id": "s", "bits": 8},
                     m.ADMISSION_IN)
    assert isinstance(msg, m.KeyRequest) and msg.bits == 8
    with pytest.raises(BadMessage, match="unknown type 'nonsense'"):
        decode_any({"type": "nonsense"}, m.ADMISSION_IN)
    with pytest.raises(BadMessage, match="missing field 'km'"):
        decode_any({"type": "close_request", "session_id": "s"}, m.ADMISSION_IN)


def test_every_class_has_a_type_and_a_topic_and_round_trips_its_required_fields():
    seen = set()
    for cls in m.ALL:
        assert cls.TYPE and cls.TOPIC, cls
        seen.add((cls.TYPE, cls.TOPIC, cls.LABEL))
        with pytest.raises(BadMessage):
            decode({"type": cls.TYPE, "v": 99}, cls)
    assert len(seen) == len(m.ALL)  # a type on one topic has variants only with a label


def test_event_keeps_its_free_fields():
    e = m.Event(element="admission", kind="config_sent", session_id=None,
                extra={"km": "km0", "update": False})
    body = e.to_payload()
    assert "session_id" not in body and body["km"] == "km0"
    assert decode(body, m.Event).extra == {"km": "km0", "update": False}


def test_telemetry_is_read_as_the_class_of_its_source():
    km = m.decode_telemetry({"type": "telemetry", "source": "km", "node": "km0",
                             "link": "km0-km1", "pool_bits": 8})
    assert isinstance(km, m.KmTelemetry) and km.pool_bits == 8
    assert "qber" not in km.to_payload()  # a KM sample carries no module fields
    mod = m.decode_telemetry({"type": "telemetry", "source": "qkd", "node": "km0",
                              "link": "km0-km1", "qber": None, "blocks_ok": 3})
    assert isinstance(mod, m.ModuleTelemetry) and mod.extra == {"blocks_ok": 3}
    assert mod.to_payload()["qber"] is None  # a module sends its QBER as null before a block
    with pytest.raises(BadMessage, match="field 'qber' must be a number or null"):
        m.decode_telemetry({"type": "telemetry", "source": "qkd", "node": "km0",
                            "link": "km0-km1", "qber": "high"})
