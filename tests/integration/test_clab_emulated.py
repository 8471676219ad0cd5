"""`qkdtwin deploy LAB --runtime clab` end to end in Docker containers from `make images`, on
a host without containerlab: tests/support/fake_containerlab.py stands in for the
`containerlab` command (same command lines, containers and veths made with docker and ip).

What is real: the qkdtwin CLI and clab runtime, the images, the inventory with the
`community.docker.docker` connection, playbooks/site.yml and its roles running over
`docker exec`, supervisord and the services in the containers. What is not: containerlab
itself (its command lines are checked by tests/unit/test_clab_runtime.py) and Docker's
networking (a host bridge carries the mgmt network).

The lab is line3 renamed `clabl3` with the mgmt subnet 172.31.238.0/24, in a temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from qkdtwin.topology import load_lab
from qkdtwin.topology.labcopy import copy_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = Path(__file__).resolve().parents[2]
LINE3 = ROOT / "labs" / "line3.clab.yml"
SUPERVISORCTL = "/opt/qkdtwin/venv/bin/python -m supervisor.supervisorctl " \
                "-c /etc/qkdtwin/supervisord.conf"


def run(argv: list[str], env: dict[str, str], timeout: float = 900
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    proc = subprocess.run([str(ROOT / "scripts" / "docker-up.sh")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"no Docker engine can be installed or started here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(ROOT / "scripts" / "build-images.sh")], capture_output=True,
                          text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bindir = tmp_path_factory.mktemp("fakeclab")
    wrapper = bindir / "containerlab"
    wrapper.write_text(f"#!/bin/sh\ncd {ROOT} && exec {sys.executable} "
                       f"-m tests.support.fake_containerlab \"$@\"\n")
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def lab(env, tmp_path_factory):
    lab = load_lab(copy_lab(LINE3, tmp_path_factory.mktemp("clabl3"), "clabl3", 238))
    qkdtwin = [sys.executable, "-m", "qkdtwin.cli"]
    run([*qkdtwin, "down", str(lab.path), "--runtime", "clab"], env)  # earlier leftovers
    yield lab
    proc = run([*qkdtwin, "down", str(lab.path), "--runtime", "clab"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def qkdtwin(env, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "qkdtwin.cli", *args], env, timeout=timeout)


def dexec(container: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)


def test_deploy_status_etsi014_down(env, lab):
    # 1. deploy: containers, links, impairments attempted, inventory, site.yml.
    first = qkdtwin(env, "deploy", str(lab.path), "--runtime", "clab")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert "clab: containerlab deploy -t" in out
    inv = (lab.lab_dir / "ansible-inventory.yml").read_text()
    assert "community.docker.docker" in inv and "/opt/qkdtwin/venv/bin/python" in inv
    # No sch_netem in this kernel: every impaired link end is reported, none silently lost.
    tc = dexec("clab-clabl3-km0", "tc qdisc show dev eth1").stdout
    if "netem" not in tc:
        assert out.count("impairment not applied") == 4, out[-3000:]

    # 2. status through containerlab inspect
    st = qkdtwin(env, "status", str(lab.path), "--runtime", "clab", "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["state"] == "up", status
    assert {n["name"] for n in status["nodes"] if n["state"] == "running"} == set(lab.nodes)

    # 3. the nodes as site.yml left them: p2p addresses (role common) and services
    ping = dexec("clab-clabl3-km0", "ping -c 2 -W 2 -q 10.10.1.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    ping = dexec("clab-clabl3-km2", f"ping -c 1 -W 2 -q {lab.broker.mgmt_ipv4}")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    broker = dexec("clab-clabl3-broker", f"{SUPERVISORCTL} status")
    assert "RUNNING" in broker.stdout and "mosquitto" in broker.stdout, broker.stdout
    ctl = dexec("clab-clabl3-ctl", f"{SUPERVISORCTL} status")
    assert ctl.stdout.count("RUNNING") >= 1, ctl.stdout + ctl.stderr
    assert "FATAL" not in ctl.stdout and "BACKOFF" not in ctl.stdout, ctl.stdout

    # 4. `up` again: nothing redeployed, the inventory rewritten
    again = qkdtwin(env, "up", str(lab.path), "--runtime", "clab")
    assert again.returncode == 0, again.stderr
    assert "all 5 containers already running" in again.stdout
    assert "containerlab deploy" not in again.stdout

    # 5. an application on the host asks km0 (in its container, through the mgmt network)
    # for ETSI 014 status with its lab certificate: mutual TLS, then the whole control plane
    # (access, admission, routing) in the ctl container configures the session.
    pki = lab.lab_dir / "pki"
    url = f"https://{lab.nodes['km0'].mgmt_ipv4}:8443/api/v1/keys/sae-a1/status"
    answer = None
    for _ in range(6):
        try:
            answer = requests.get(url, cert=(str(pki / "sae" / "sae-a0.crt"),
                                             str(pki / "sae" / "sae-a0.key")),
                                  verify=str(pki / "ca.crt"), timeout=30)
        except requests.ConnectionError:
            time.sleep(5)
            continue
        if answer.status_code == 200:
            break
        time.sleep(5)
    assert answer is not None, f"km0 does not answer at {url}"
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["source_KME_ID"] == "km0" and body["target_KME_ID"] == "km1", body
    assert body["master_SAE_ID"] == "sae-a0" and body["slave_SAE_ID"] == "sae-a1", body
    assert body["key_size"] > 0

    # 6. down: containers, mgmt bridge and the lab directory are gone
    down = qkdtwin(env, "down", str(lab.path), "--runtime", "clab")
    assert down.returncode == 0, down.stderr
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=containerlab=clabl3"],
                          capture_output=True, text=True).stdout.split()
    assert left == []
    assert not lab.lab_dir.exists()
