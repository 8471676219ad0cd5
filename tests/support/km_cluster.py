"""Several Key Manager processes on loopback, linked by fake QKD modules, for tests and the
benchmark: ``KmCluster(tmp, ca, broker_port, links=[("km0","km1"), ("km1","km2")]).start()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.broker import free_port
from tests.support.fake_qkd_module import FakeQkdModule, module_pair  # noqa: F401
from tests.support.pki import TestCA
from tests.support.procs import terminate_all

ROOT = Path(__file__).resolve().parents[2]


class KmCluster:
    __test__ = False

    def __init__(self, directory: Path, ca: TestCA, broker_port: int | None,
                 links: list[tuple[str, str]], rate_keys_per_s: float | None = None,
                 rates: dict[str, float] | None = None,
                 module_urls: dict[str, tuple[str, str]] | None = None,
                 extra: dict[str, Any] | None = None,
                 per_km: dict[str, dict[str, Any]] | None = None) -> None:
        self.dir = Path(directory)
        self.ca = ca
        self.links = links
        self.nodes = sorted({n for link in links for n in link})
        self.procs: dict[str, subprocess.Popen] = {}
        self.modules: dict[str, tuple[FakeQkdModule, FakeQkdModule]] = {}
        self.configs: dict[str, Path] = {}
        self.ids = {n: ca.issue(n, ou="node") for n in self.nodes}
        urls: dict[str, tuple[str, str]] = dict(module_urls or {})
        for a, b in links:
            if f"{a}-{b}" in urls:  # real modules, run by the caller
                continue
            self.modules[f"{a}-{b}"] = module_pair(
                f"{a}-{b}", (rates or {}).get(f"{a}-{b}", rate_keys_per_s))
            urls[f"{a}-{b}"] = (self.modules[f"{a}-{b}"][0].url, self.modules[f"{a}-{b}"][1].url)
        # pick the KMs' ports after the modules are listening, so none can collide with them
        self.ports = {n: free_port() for n in self.nodes}
        for n in self.nodes:
            mods = []
            for a, b in links:
                if n not in (a, b):
                    continue
                peer = b if n == a else a
                ua, ub = urls[f"{a}-{b}"]
                mods.append({"link": f"{a}-{b}", "peer": peer,
                             "peer_url": f"https://127.0.0.1:{self.ports[peer]}",
                             "module_url": ua if n == a else ub})
            cfg: dict[str, Any] = {
                "node": n, "listen": {"host": "127.0.0.1", "port": self.ports[n]},
                "tls": {"ca": ca.ca, "cert": self.ids[n].cert, "key": self.ids[n].key},
                "data_dir": str(self.dir / n), "modules": mods, "log_level": "warning",
                "pool": {"low_keys": 4096, "batch": 512, "max_keys": 20000},
                "control_timeout_s": 5,
            }
            if broker_port is not None:
                cfg["broker"] = {"host": "127.0.0.1", "port": broker_port, "ca": ca.ca,
                                 "cert": self.ids[n].cert, "key": self.ids[n].key}
            cfg.update(extra or {})
            cfg.update((per_km or {}).get(n, {}))
            p = self.dir / f"{n}.yml"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(yaml.safe_dump(cfg))
            self.configs[n] = p

    def url(self, n: str) -> str:
        return f"https://127.0.0.1:{self.ports[n]}"

    def start(self, wait_pools: bool = True) -> KmCluster:
        for n in self.nodes:
            self.start_node(n)
        for n in self.nodes:
            self.wait_healthy(n, pools=wait_pools)
        return self

    def start_node(self, n: str) -> None:
        log = open(self.dir / f"{n}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.procs[n] = subprocess.Popen(
            [sys.executable, "-m", "qkdtwin.key_manager", "--config", str(self.configs[n])],
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def health(self, n: str) -> dict[str, Any]:
        r = requests.get(f"{self.url(n)}/healthz", verify=self.ca.ca, timeout=2)
        return r.json()

    def wait_healthy(self, n: str, pools: bool = True, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        last: Any = None
        while time.time() < deadline:
            if self.procs[n].poll() is not None:
                raise RuntimeError(f"{n} exited: {(self.dir / f'{n}.log').read_text()[-2000:]}")
            try:
                last = self.health(n)
                if last.get("ok") and last.get("broker", True) and (not pools or all(
                        link["pool_bits"] > 0 for link in last["links"].values())):
                    return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{n} not healthy: {last}")

    def kill(self, n: str) -> None:
        p = self.procs[n]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(5)

    def stop(self) -> None:
        terminate_all(self.procs.values(), 5)
        for ma, mb in self.modules.values():
            ma.stop()
            mb.stop()


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


@contextlib.contextmanager
def km_lab(directory: Path, ca: TestCA, users: dict, links: list[tuple[str, str]],
           **cluster_kwargs: Any) -> Iterator[dict[str, Any]]:
    """A real Mosquitto, the stand-in control plane and a KmCluster on ``links``, with an
    mTLS session per application of ``users``: what the KM integration tests share.
    Yields {cluster, ctl, saes, ca, dir}; stops everything it started."""
    from qkdtwin.bus import BrokerConfig
    from tests.support.broker import TestBroker
    from tests.support.fake_control import FakeControl

    broker = TestBroker(directory / "broker", ca).start()
    ctl = cluster = None
    try:
        ident = ca.issue("ctl", ou="node")
        ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, ca.ca, ident.cert, ident.key),
                          users, links).start()
        cluster = KmCluster(directory, ca, broker.port, links, **cluster_kwargs)
        cluster.start()
        saes = {s: sae_session(ca, s, u["user"]) for s, u in users.items()}
        yield {"cluster": cluster, "ctl": ctl, "saes": saes, "ca": ca, "dir": directory}
    finally:
        if cluster is not None:
            cluster.stop()
        if ctl is not None:
            ctl.stop()
        broker.stop()
