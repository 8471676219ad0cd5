"""A lab from `qkdtwin generate` of 20 key managers (a 4 x 5 grid, 31 analytic links,
control roles on one node) deploys on this host and runs its generated scenario: ten
application pairs of up to six hops at once, ETSI 014 and 004, through Eve on one link and
the cut of another at the same time.

The lab is named `gen20` with mgmt 172.31.243.0/24, its artefacts in a temp dir; leftovers
of an interrupted run are removed first, and the lab is torn down at the end.
"""

from __future__ import annotations

import os
import shutil

import pytest

from qkdtwin.events import load_events
from qkdtwin.scenario import cli as scenario_cli
from qkdtwin.topology.generate import Spec
from tests.support.generated import deployed_generated_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]


def test_a_generated_20_node_lab_deploys_and_passes_its_scenario_with_faults(tmp_path):
    spec = Spec("grid", nodes=20, name="gen20", octet=243, seed=1)
    with deployed_generated_lab(spec, tmp_path) as (lab, paths, lines):
        result = scenario_cli.run(str(lab.path), paths[2], log=lines.append)
        text = "\n".join(lines[-60:])
        assert result.ok, text
        assert len(result.pairs) == 10
        for p in result.pairs:
            assert p.keys_matched == 10 and p.mismatches == 0, (p.name, text)
        assert [f.ok for f in result.faults] == [True] * 4, text
        eve, cut = (next(f.fault.link for f in result.faults if f.fault.action == a)
                    for a in ("eve", "link_down"))
        # the faults were real: monitoring raised the QBER alarm on Eve's link and saw
        # the other one go down
        events = list(load_events(lab.lab_dir / "events"))
        eve_id, cut_id = ("-".join(sorted(x.split(":"), key=lambda n: int(n[2:])))
                          for x in (eve, cut))
        assert any(e.kind == "alarm_raised" and e.payload.get("alarm") == "qber_high"
                   and e.payload.get("link") == eve_id for e in events), eve_id
        assert any(e.kind == "alarm_link_down" and e.payload.get("link") == cut_id
                   for e in events), cut_id
