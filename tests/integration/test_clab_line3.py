"""line3 deployed for real with containerlab (`qkdtwin deploy line3 --runtime clab`).

Runs only on lab hosts with the `containerlab` binary on PATH (it is not installed on the
project's CI machines; the command lines sent to it are checked by
tests/unit/test_clab_runtime.py for every lab). Needs root, Docker and the images
(`make images`, which this test runs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
QKDTWIN = [sys.executable, "-m", "qkdtwin.cli"]
LAB = ROOT / "labs" / "line3.clab.yml"


def run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def deployed():
    if shutil.which("containerlab") is None:
        pytest.skip("containerlab is not on PATH (lab hosts only)")
    proc = run([str(ROOT / "scripts" / "build-images.sh")], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run([*QKDTWIN, "down", str(LAB), "--runtime", "clab"])  # leftovers of an earlier run
    proc = run([*QKDTWIN, "deploy", str(LAB), "--runtime", "clab"], timeout=1500)
    yield proc
    proc = run([*QKDTWIN, "down", str(LAB), "--runtime", "clab"])
    assert proc.returncode == 0, proc.stderr


def test_deploy_and_status(deployed):
    assert deployed.returncode == 0, deployed.stdout[-4000:] + deployed.stderr[-2000:]
    proc = run([*QKDTWIN, "status", str(LAB), "--runtime", "clab", "--json"])
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["state"] == "up"
    assert {n["container"] for n in st["nodes"]} == {
        f"clab-line3-{n}" for n in ("broker", "ctl", "km0", "km1", "km2")}


def test_p2p_link_and_impairment(deployed):
    # Addresses come from Ansible (role common); the link km0-km1 has a 1 ms delay each way.
    proc = run(["docker", "exec", "clab-line3-km0", "ping", "-c", "3", "-q", "10.10.1.2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(["docker", "exec", "clab-line3-km0", "tc", "qdisc", "show", "dev", "eth1"])
    assert "netem" in proc.stdout and "delay 1ms" in proc.stdout, proc.stdout


def test_second_deploy_changes_nothing(deployed):
    proc = run([*QKDTWIN, "deploy", str(LAB), "--runtime", "clab"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "changed=0" in proc.stdout, proc.stdout[-2000:]
