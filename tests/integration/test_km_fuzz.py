"""Fuzzing the Key Manager's ETSI 014 and 004 APIs from their OpenAPI documents
(docs/openapi/) with schemathesis: two real KM processes km0 – km1 on loopback (stand-in QKD
modules, a real Mosquitto, the stand-in control plane), called over mutual TLS with a real
application certificate (sae-a of user alice at km0).

Every generated request (schemathesis's examples, coverage and fuzzing phases, positive and
negative data, a bounded number of examples per operation) must get: no 5xx, a status code
the document lists for the operation, the documented content type and body schema, 405 with
``Allow`` for methods the document does not list, and a JSON ``message`` on every error.

Half of the generated SAE IDs, key IDs and key stream ids are replaced by real ones (the
peer application sae-b at km1, keys it got for sae-a, an open ETSI 004 stream), so that the
fuzzer reaches the services behind access control and not only their refusals.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.km_cluster import km_lab

# schemathesis (and hypothesis, which it brings) are dev extras: a venv made before they were
# added skips this module instead of failing the whole collection (`make install` adds them)
schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USERS = {"sae-a": {"user": "alice", "km": "km0"}, "sae-b": {"user": "alice", "km": "km1"}}
LINKS = [("km0", "km1")]
STREAM = str(uuid.uuid4())  # an ETSI 004 stream sae-a – sae-b, opened by the fixture
MAX_EXAMPLES = 25  # fuzzing phase, per operation (examples and coverage phases come on top)
REAL: dict[str, list[Any]] = {"key_ids": []}


@schemathesis.check
def error_has_message(ctx, response, case) -> bool | None:
    """Every non-2xx answer is a JSON object with a non-empty string ``message``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) \
        and body["message"], f"HTTP {response.status_code} without a message: {body!r}"
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, unsupported_method, error_has_message]
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def _load(name: str):
    schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi" / f"{name}.yaml")

    @schema.hook
    def flatmap_path_parameters(ctx, path_parameters):
        if not isinstance(path_parameters, dict) or not path_parameters:
            return st.just(path_parameters)
        real = {k: "sae-b" for k in path_parameters}
        return st.sampled_from([path_parameters, real])

    @schema.hook
    def flatmap_query(ctx, query):
        if not isinstance(query, dict) or "key_ID" not in query or not REAL["key_ids"]:
            return st.just(query)
        return st.sampled_from([query] + [{"key_ID": k} for k in REAL["key_ids"]])

    @schema.hook
    def flatmap_body(ctx, body):
        if not isinstance(body, dict):
            return st.just(body)
        real = dict(body)
        if "source" in body or "destination" in body:
            real.update(source="sae-a", destination="sae-b")
        if "key_stream_id" in body and ctx.operation.path != "/api/v1/qkd004/open_connect":
            real["key_stream_id"] = STREAM
        return st.sampled_from([body, real])

    return schema


etsi014 = _load("etsi014")
etsi004 = _load("etsi004")


@pytest.fixture(scope="module")
def km(tmp_path_factory, test_ca):
    """km0 – km1 with the stand-in control plane; sae-a's session to km0; a few keys of
    sae-b for sae-a (dec_keys at km0 finds them) and an open 004 stream between the two."""
    d = tmp_path_factory.mktemp("fuzz")
    with km_lab(d, test_ca, USERS, LINKS,
                extra={"request_wait_s": 0.5, "control_timeout_s": 2}) as lab:
        cl, a, b = lab["cluster"], lab["saes"]["sae-a"], lab["saes"]["sae-b"]
        deadline = time.monotonic() + 60
        while True:  # the first keys of a session may take longer than request_wait_s
            r = b.post(f"{cl.url('km1')}/api/v1/keys/sae-a/enc_keys", json={"number": 20},
                       timeout=30)
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        REAL["key_ids"] = [k["key_ID"] for k in r.json()["keys"]]
        body = {"source": "sae-a", "destination": "sae-b", "key_stream_id": STREAM,
                "qos": {"timeout": 3000}}
        assert a.post(f"{cl.url('km0')}/api/v1/qkd004/open_connect", json=body,
                      timeout=30).json()["status"] in (0, 1)
        assert b.post(f"{cl.url('km1')}/api/v1/qkd004/open_connect", json=body,
                      timeout=30).json()["status"] in (0, 1)
        yield {"url": cl.url("km0"), "session": a, "cluster": cl, "ca": test_ca.ca}
        for n in ("km0", "km1"):  # nothing crashed, nothing logged a traceback
            assert cl.procs[n].poll() is None, f"{n} exited"
            log = (d / f"{n}.log").read_text()
            assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


@etsi014.parametrize()
@SETTINGS
def test_etsi014_conforms_to_its_document(case, km):
    case.call_and_validate(base_url=km["url"], session=km["session"], checks=CHECKS,
                           verify=km["ca"], cert=km["session"].cert, timeout=30)


@etsi004.parametrize()
@SETTINGS
def test_etsi004_conforms_to_its_document(case, km):
    case.call_and_validate(base_url=km["url"], session=km["session"], checks=CHECKS,
                           verify=km["ca"], cert=km["session"].cert, timeout=30)


def test_km_process_serves_the_documents_of_docs(km):
    """The documents the fuzzer used are the ones a running KM serves (no certificate)."""
    for name in ("etsi014", "etsi004"):
        r = requests.get(f"{km['url']}/api/v1/openapi/{name}", verify=km["ca"], timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == (ROOT / "docs" / "openapi" / f"{name}.yaml").read_bytes()
