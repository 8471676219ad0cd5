"""A lab from `qkdtwin generate`, deployed on the netns runtime for one test.

Leftovers of an interrupted earlier run are removed first; the lab is torn down at the end
and no namespace of it may remain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from qkdtwin.deploy import deploy
from qkdtwin.runtime.netns.system import namespaces
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import load_lab
from qkdtwin.topology.generate import Spec, generate
from qkdtwin.topology.labcopy import lab_lock

NETNS = get_runtime("netns")


@contextlib.contextmanager
def deployed_generated_lab(spec: Spec, workdir: Path) -> Iterator[tuple]:
    """Yields (lab, paths of the lab, users and scenario files, deploy log lines)."""
    with lab_lock(spec.lab_name):
        paths = generate(spec, workdir)
        lab = load_lab(paths[0])
        NETNS.down(lab, log=lambda _: None)
        try:
            lines: list[str] = []
            assert deploy(lab.path, log=lines.append).ok, "\n".join(lines[-40:])
            yield lab, paths, lines
        finally:
            NETNS.down(lab, log=lambda _: None)
        assert not [ns for ns in namespaces() if ns.startswith(f"clab-{spec.lab_name}-")]
