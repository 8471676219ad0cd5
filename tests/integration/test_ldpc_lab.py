"""A lab whose every QKD link reconciles with LDPC (`vars.qkd.reconciliation: ldpc`) deploys
and runs its scenario: a ring of three key managers from `qkdtwin generate`, bb84 links at
5 MHz over 5 km, two application pairs (ETSI 014 and 004) get identical keys at both ends.

The lab is named `ldpc3` with mgmt 172.31.247.0/24, its files in a temp dir; leftovers of an
interrupted run are removed first, and the lab is torn down at the end.
"""

from __future__ import annotations

import os
import shutil

import pytest

from qkdtwin.scenario import cli as scenario_cli
from qkdtwin.topology.generate import Spec
from tests.support.generated import deployed_generated_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]


# Known, not yet understood: on this slow lab the ETSI 014 pair sometimes gets "not enough
# key available for this SAE pair" for its whole timeout while the 004 pair on the same link
# is served (1 of 3 clean-clone runs, 2026-12-04). Not strict: the test still runs and
# reports whether it passed.
@pytest.mark.xfail(strict=False, reason="014 pair starved on a slow link (KM key sharing)")
def test_a_lab_reconciling_with_ldpc_delivers_identical_keys(tmp_path):
    spec = Spec("ring", nodes=3, name="ldpc3", octet=247, seed=1, model="bb84",
                reconciliation="ldpc", source_rate_hz=5.0e6, length_km=5.0, pairs=2,
                faults=False)
    with deployed_generated_lab(spec, tmp_path) as (lab, paths, lines):
        assert [lk.qkd["reconciliation"] for lk in lab.qkd_links] == ["ldpc"] * 3
        result = scenario_cli.run(str(lab.path), paths[2], log=lines.append)
        text = "\n".join(lines[-60:])
        assert result.ok, text
        assert sorted(p.api for p in result.pairs) == ["004", "014"]
        for p in result.pairs:
            assert p.keys_matched == 10 and p.mismatches == 0, (p.name, text)
