"""Several Key Manager processes on loopback, linked by stand-in QKD modules, for tests and
the benchmark: ``KmCluster(tmp, ca, broker_port, links=[("km0","km1"), ("km1","km2")]).start()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from qkdtwin.testbed.broker import free_port
from qkdtwin.testbed.fake_qkd_module import FakeQkdModule, module_pair
from qkdtwin.testbed.pki import TestCA
from qkdtwin.testbed.procs import terminate_all

SRC = Path(__file__).resolve().parents[2]  # the directory that holds the qkdtwin package


class KmCluster:
    __test__ = False

    def __init__(self, directory: Path, ca: TestCA, broker_port: int | None,
                 links: list[tuple[str, str]], rate_keys_per_s: float | None = None,
                 rates: dict[str, float] | None = None,
                 module_urls: dict[str, tuple[str, str]] | None = None,
                 module_tokens: dict[str, tuple[str, str]] | None = None,
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
                if f"{a}-{b}" in (module_tokens or {}):  # real modules: their API tokens
                    ta, tb = module_tokens[f"{a}-{b}"]  # type: ignore[index]
                    mods[-1]["module_token_file"] = ta if n == a else tb
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

    def start(self, wait_pools: bool = True, timeout: float = 60.0) -> KmCluster:
        """Start every KM and wait until each is healthy (generous: hosts are shared)."""
        for n in self.nodes:
            self.start_node(n)
        for n in self.nodes:
            self.wait_healthy(n, pools=wait_pools, timeout=timeout)
        return self

    def start_node(self, n: str, env: dict[str, str] | None = None) -> None:
        """Start KM ``n`` (``env``: extra environment, e.g. a test's fault hook)."""
        log = open(self.dir / f"{n}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        self.procs[n] = subprocess.Popen(
            [sys.executable, "-m", "qkdtwin.key_manager", "--config", str(self.configs[n])],
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def health(self, n: str) -> dict[str, Any]:
        r = requests.get(f"{self.url(n)}/healthz", verify=self.ca.ca, timeout=2,
                         cert=(self.ids[n].cert, self.ids[n].key))  # details: node cert
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
