"""Key Manager test helpers: an application's HTTPS client, the ETSI 004 GET_KEY retry, and
``km_lab`` (broker + stand-in control plane + :class:`qkdtwin.testbed.km_cluster.KmCluster`).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from qkdtwin.bus import BrokerConfig
from qkdtwin.testbed.broker import TestBroker
from qkdtwin.testbed.fake_control import FakeControl
from qkdtwin.testbed.km_cluster import KmCluster
from qkdtwin.testbed.pki import TestCA

ROOT = Path(__file__).resolve().parents[2]


def sae_session(ca: TestCA, sae: str, user: str) -> requests.Session:
    """An application's HTTPS client (keep-alive, client certificate CN=sae, O=user)."""
    ident = ca.issue(sae, ou="sae", o=user)
    # TestCA names files after ou/cn only: keep a private copy so that a later certificate
    # with the same CN (e.g. a test's impostor) does not replace this one
    tag = uuid.uuid4().hex[:8]
    cert, key = f"{ident.cert}.{tag}", f"{ident.key}.{tag}"
    shutil.copyfile(ident.cert, cert)
    shutil.copyfile(ident.key, key)
    s = requests.Session()
    s.cert = (cert, key)
    s.verify = ca.ca
    s.trust_env = False
    return s


# ETSI 004 GET_KEY answers that mean "ask again", as an application would: 2 = no key yet
# (e.g. a relay still under way after a short QoS timeout), 3 = the session's configuration
# is still on its way to this KM (it can arrive just after the peer's OPEN_CONNECT said 0).
GET_KEY_AGAIN = (2, 3)


def get_key_until(sae: requests.Session, km_url: str, key_stream_id: str,
                  index: int | None = None, *, patience_s: float = 20.0, pause_s: float = 0.2,
                  http_timeout_s: float = 10.0) -> requests.Response:
    """ETSI 004 GET_KEY (next position, or `index`) until the answer is not one of
    GET_KEY_AGAIN or `patience_s` has passed; the last answer."""
    body: dict[str, Any] = {"key_stream_id": key_stream_id}
    if index is not None:
        body["index"] = index
    deadline = time.monotonic() + patience_s
    while True:
        r = sae.post(f"{km_url}/api/v1/qkd004/get_key", json=body, timeout=http_timeout_s)
        if r.json().get("status") not in GET_KEY_AGAIN or time.monotonic() > deadline:
            return r
        time.sleep(pause_s)


def open_004_pair(src: requests.Session, src_url: str, src_sae: str,
                  dst: requests.Session, dst_url: str, dst_sae: str, *, chunk: int = 32,
                  timeout_ms: int = 300, peer_timeout_ms: int = 15000, **qos: Any) -> str:
    """ETSI 004 OPEN_CONNECT at both ends of a new stream; its key_stream_id. The first
    answers 0, or 1 (peer not connected) after its short QoS timeout; the second must be 0."""
    sid = str(uuid.uuid4())
    body = {"source": src_sae, "destination": dst_sae, "key_stream_id": sid,
            "qos": {"key_chunk_size": chunk, "timeout": timeout_ms, **qos}}
    r = src.post(f"{src_url}/api/v1/qkd004/open_connect", json=body)
    assert r.status_code == 200 and r.json()["status"] in (0, 1), r.text
    r = dst.post(f"{dst_url}/api/v1/qkd004/open_connect",
                 json={**body, "source": dst_sae, "destination": src_sae,
                       "qos": {**body["qos"], "timeout": peer_timeout_ms}})
    assert r.status_code == 200 and r.json()["status"] == 0, r.text
    return sid


@contextlib.contextmanager
def km_lab(directory: Path, ca: TestCA, users: dict, links: list[tuple[str, str]],
           ctl_kwargs: dict[str, Any] | None = None,
           **cluster_kwargs: Any) -> Iterator[dict[str, Any]]:
    """A real Mosquitto, the stand-in control plane and a KmCluster on ``links``, with an
    mTLS session per application of ``users``: what the KM integration tests share
    (``ctl_kwargs``: more arguments of FakeControl, e.g. the sessions' ``bucket``).
    Yields {cluster, ctl, saes, ca, dir}; stops everything it started."""
    broker = TestBroker(directory / "broker", ca).start()
    ctl = cluster = None
    try:
        ident = ca.issue("ctl", ou="node")
        ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, ca.ca, ident.cert, ident.key),
                          users, links, **(ctl_kwargs or {})).start()
        cluster = KmCluster(directory, ca, broker.port, links, **cluster_kwargs)
        cluster.start(timeout=60)  # generous: the machine is shared
        saes = {s: sae_session(ca, s, u["user"]) for s, u in users.items()}
        yield {"cluster": cluster, "ctl": ctl, "saes": saes, "ca": ca, "dir": directory}
    finally:
        if cluster is not None:
            cluster.stop()
        if ctl is not None:
            ctl.stop()
        broker.stop()
