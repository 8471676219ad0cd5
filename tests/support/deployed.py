"""The deployed labs shared by the testinfra checks (tests/infra/) and the integration tests
that need a whole lab: one deployment of each per session, and only one up at a time.

Two fixtures, both module-scoped views of a session-wide :class:`LabPool`:

- ``deployed_lab``: a copy of labs/line3 renamed ``infline3`` (mgmt 172.31.233.0/24);
- ``deployed_star6``: a copy of labs/star6 renamed ``infstar6`` (mgmt 172.31.236.0/24).

Each copy lives in a temp dir (its own artefacts dir), so it never touches a lab somebody
deployed from labs/, and is removed when the pool moves on to the other lab or the session
ends. tests/conftest.py orders the tests so that all tests of one lab run together (the
2-core CI machine runs one lab at a time). Set QKDTWIN_INFRA_LAB / QKDTWIN_STAR6_LAB to
labs/<lab>.clab.yml to test a lab deployed from labs/ instead (deployed first if it is not
up; then left as found).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

from qkdtwin.topology.labcopy import copy_lab, lab_lock
from tests.infra.netns_backend import register as register_netns_backend

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LabSpec:
    source: Path   # the lab in labs/ the copy is made from
    name: str      # the copy's name
    octet: int     # the copy's mgmt subnet 172.31.<octet>.0/24
    env: str       # names a lab deployed from labs/ to use instead of the copy


LABS = {
    "deployed_lab": LabSpec(ROOT / "labs" / "line3.clab.yml", "infline3", 233,
                            "QKDTWIN_INFRA_LAB"),
    "deployed_star6": LabSpec(ROOT / "labs" / "star6.clab.yml", "infstar6", 236,
                              "QKDTWIN_STAR6_LAB"),
}
INFRA_LAB_ENV = LABS["deployed_lab"].env


def infra_node_names() -> list[str]:
    """Node names of the line3 lab under test, known at collection time (from the topology)."""
    spec = LABS["deployed_lab"]
    env = os.environ.get(spec.env)
    data = yaml.safe_load((Path(env).resolve() if env else spec.source).read_text())
    return sorted(data["topology"]["nodes"])


@dataclass
class DeployedLab:
    lab: Any  # qkdtwin.topology.Lab
    inventory: dict
    first_deploy: Any  # qkdtwin.deploy.DeployResult or None when found deployed

    @property
    def name(self) -> str:
        return self.lab.name

    @property
    def pki(self) -> Path:
        return self.lab.lab_dir / "pki"

    @property
    def all_vars(self) -> dict:
        return self.inventory["all"]["vars"]

    def hostvars(self, node: str) -> dict:
        return self.inventory["all"]["hosts"][node]

    def nodes_with_role(self, role: str) -> list[str]:
        return sorted(self.inventory["all"]["children"].get(role, {}).get("hosts") or {})

    def host(self, node: str):
        """A testinfra host running commands in the node's namespace."""
        register_netns_backend()
        return testinfra.get_host(f"netns://{self.lab.namespace(node)}")


def _is_up(lab) -> bool:
    from qkdtwin.runtime import netns

    return {lab.namespace(n) for n in lab.nodes} <= netns.namespaces()


@contextlib.contextmanager
def _deployed(spec: LabSpec, workdir: Path) -> Iterator[DeployedLab]:
    from qkdtwin.deploy import deploy
    from qkdtwin.runtime.inventory import inventory_path
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab

    netns = get_runtime("netns")
    lines: list[str] = []
    env = os.environ.get(spec.env)
    with lab_lock(load_lab(env).name if env else spec.name):
        if env:
            lab = load_lab(env)
            owned = not _is_up(lab)
        else:
            lab = load_lab(copy_lab(spec.source, workdir, spec.name, spec.octet))
            netns.down(lab, log=lines.append)  # leftovers of an interrupted earlier session
            owned = True
        try:
            result = None
            if owned or not inventory_path(lab).exists():
                print(f"\n[deployed labs] deploying {lab.name} from {lab.path}", flush=True)
                result = deploy(lab.path, log=lines.append)
                if not result.ok:
                    pytest.fail(f"deploy of {lab.name} failed:\n" + "\n".join(lines[-60:]))
            inventory = yaml.safe_load(inventory_path(lab).read_text())
            yield DeployedLab(lab, inventory, result)
        finally:
            if owned:
                print(f"\n[deployed labs] removing {lab.name}", flush=True)
                netns.down(lab, log=lines.append)


class LabPool:
    """At most one shared lab up at a time: asking for another one removes the current one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._current: tuple[str, DeployedLab, contextlib.ExitStack] | None = None

    def get(self, key: str) -> DeployedLab:
        if self._current and self._current[0] == key:
            return self._current[1]
        self.release()
        stack = contextlib.ExitStack()
        lab = stack.enter_context(_deployed(LABS[key], self.workdir / key))
        self._current = (key, lab, stack)
        return lab

    def release(self) -> None:
        if self._current:
            _, _, stack = self._current
            self._current = None
            stack.close()


@pytest.fixture(scope="session")
def lab_pool(tmp_path_factory) -> Iterator[LabPool]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed (make installs it)")
    pool = LabPool(tmp_path_factory.mktemp("labs"))
    yield pool
    pool.release()


@pytest.fixture(scope="module")
def deployed_lab(lab_pool) -> DeployedLab:
    """line3 after `qkdtwin deploy` (see the module docstring for which copy)."""
    return lab_pool.get("deployed_lab")


@pytest.fixture(scope="module")
def deployed_star6(lab_pool) -> DeployedLab:
    """star6 after `qkdtwin deploy`: every control element on its own node."""
    return lab_pool.get("deployed_star6")


def lab_group(fixturenames) -> int:
    """Sort key that runs the tests of each shared lab together (no lab first)."""
    for i, key in enumerate(LABS, start=1):
        if key in fixturenames:
            return i
    return 0
