"""Ending the service processes a test started."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def terminate_all(procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every running process, then wait for each; SIGKILL what does not end in time."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
