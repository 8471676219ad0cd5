"""A lab whose every QKD link reconciles with LDPC (`vars.qkd.reconciliation: ldpc`) and
mixes link models deploys and runs its scenario: a ring of three key managers from `qkdtwin
generate`, one `bb84` link and two `statistical` ones at 5 MHz over 5 km, two application
pairs (ETSI 014 and 004) get identical keys at both ends.

The lab is named `ldpc3` with mgmt 172.31.247.0/24, its files in a temp dir; leftovers of an
interrupted run are removed first, and the lab is torn down at the end.
"""

from __future__ import annotations

import os
import shutil

import pytest

from qkdtwin.runtime.netns.report import format_status
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.scenario import cli as scenario_cli
from qkdtwin.topology.generate import Spec
from tests.support.generated import deployed_generated_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]


def test_a_lab_reconciling_with_ldpc_delivers_identical_keys(tmp_path):
    spec = Spec("ring", nodes=3, name="ldpc3", octet=247, seed=1, model="statistical",
                bb84_links=1, reconciliation="ldpc", source_rate_hz=5.0e6, length_km=5.0,
                pairs=2, faults=False)
    with deployed_generated_lab(spec, tmp_path) as (lab, paths, lines):
        assert [lk.qkd["reconciliation"] for lk in lab.qkd_links] == ["ldpc"] * 3
        assert sorted(lk.qkd_label for lk in lab.qkd_links) == [
            "bb84/ldpc", "statistical/ldpc", "statistical/ldpc"]
        status = format_status(get_runtime("netns").status(lab))  # `qkdtwin status`
        assert status.count("statistical/ldpc") == 2 and "bb84/ldpc" in status, status
        result = scenario_cli.run(str(lab.path), paths[2], log=lines.append)
        text = "\n".join(lines[-60:])
        assert result.ok, text
        assert sorted(p.api for p in result.pairs) == ["004", "014"]
        for p in result.pairs:
            assert p.keys_matched == 10 and p.mismatches == 0, (p.name, text)
