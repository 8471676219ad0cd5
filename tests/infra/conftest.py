"""testinfra checks (tests/infra/) of a deployed lab: the `netns://` backend and one test per
node. The lab itself is the session fixture `deployed_lab` (tests/support/deployed.py,
registered in tests/conftest.py): by default a copy of labs/line3 renamed `infline3`;
QKDTWIN_INFRA_LAB=labs/<lab>.clab.yml checks a lab deployed from labs/ instead.
"""

from __future__ import annotations

import pytest

from tests.infra.netns_backend import register
from tests.support.deployed import infra_node_names

register()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "infra_node" in metafunc.fixturenames:
        metafunc.parametrize("infra_node", infra_node_names(), scope="session")
