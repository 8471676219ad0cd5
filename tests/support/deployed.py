"""The deployed lab shared by the testinfra checks (tests/infra/) and the integration tests
that need a whole lab (tests/integration/test_qkd_links.py): one session fixture,
registered once in tests/conftest.py, so a session deploys it once.

By default the session deploys a copy of labs/line3 renamed `infline3` (own mgmt subnet
172.31.233.0/24, own artefacts dir in a temp dir), so it never touches a lab somebody
deployed from labs/, and removes it at the end. Set QKDTWIN_INFRA_LAB=labs/<lab>.clab.yml
to check a lab deployed from labs/ instead (deployed first if it is not up; then left
as found).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

from tests.infra.labcopy import copy_lab, lab_lock

ROOT = Path(__file__).resolve().parents[2]
INFRA_LAB_ENV = "QKDTWIN_INFRA_LAB"
DEFAULT_SOURCE = ROOT / "labs" / "line3.clab.yml"

def _source_lab_file() -> Path:
    env = os.environ.get(INFRA_LAB_ENV)
    return Path(env).resolve() if env else DEFAULT_SOURCE


def infra_node_names() -> list[str]:
    """Node names of the lab under test, known at collection time (from the topology)."""
    data = yaml.safe_load(_source_lab_file().read_text())
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
        return testinfra.get_host(f"netns://{self.lab.namespace(node)}")


def _is_up(lab) -> bool:
    from qkdtwin.runtime import netns

    return {lab.namespace(n) for n in lab.nodes} <= netns.namespaces()


@pytest.fixture(scope="session")
def deployed_lab(tmp_path_factory) -> DeployedLab:
    """A lab after `qkdtwin deploy` (see the module docstring for which one)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed (make installs it)")
    from qkdtwin.deploy import deploy
    from qkdtwin.runtime import netns
    from qkdtwin.runtime.inventory import inventory_path
    from qkdtwin.topology import load_lab

    lines: list[str] = []
    env = os.environ.get(INFRA_LAB_ENV)
    with lab_lock(load_lab(env).name if env else "infline3"):
        if env:
            lab = load_lab(env)
            owned = not _is_up(lab)
        else:
            path = copy_lab(DEFAULT_SOURCE, tmp_path_factory.mktemp("infra"), "infline3", 233)
            lab = load_lab(path)
            netns.down(lab, log=lines.append)  # leftovers of an interrupted earlier session
            owned = True
        result = None
        if owned or not inventory_path(lab).exists():
            result = deploy(lab.path, log=lines.append)
            if not result.ok:
                if owned:
                    netns.down(lab, log=lines.append)
                pytest.fail("deploy failed:\n" + "\n".join(lines[-60:]))
        inventory = yaml.safe_load(inventory_path(lab).read_text())
        yield DeployedLab(lab, inventory, result)
        if owned:
            netns.down(lab, log=lines.append)
