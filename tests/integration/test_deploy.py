"""`qkdtwin deploy` end to end on a copy of line3: first deploy, a second one that changes
nothing, repair of drift, failure reporting, and `down` leaving nothing behind.

The lab is labs/line3 renamed `depline3` with its own mgmt subnet (172.31.234.0/24) and
artefacts in a temp dir, so it never touches a lab deployed from labs/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qkdtwin.cli import main
from qkdtwin.deploy import deploy
from qkdtwin.runtime import netns
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import load_lab
from qkdtwin.topology.labcopy import copy_lab, lab_lock

NETNS = get_runtime("netns")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

LINE3 = Path(__file__).resolve().parents[2] / "labs" / "line3.clab.yml"
SUPERVISORCTL = "-m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"


def in_node(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          check=check, timeout=60)


def lab_pids(lab) -> dict[str, list[int]]:
    return {node: netns.ns_pids(lab.namespace(node)) for node in lab.nodes}


def test_deploy_twice_repair_fail_and_down(tmp_path, capsys):
    with lab_lock("depline3"):
        _deploy_twice_repair_fail_and_down(tmp_path, capsys)


def _deploy_twice_repair_fail_and_down(tmp_path, capsys):
    lab = load_lab(copy_lab(LINE3, tmp_path, "depline3", 234))
    NETNS.down(lab, log=lambda _: None)  # leftovers of an interrupted earlier run
    try:
        # 1. First deploy: everything is created.
        lines: list[str] = []
        first = deploy(lab.path, log=lines.append)
        assert first.ok, "\n".join(lines[-40:])
        assert set(first.playbook.recap) == set(lab.nodes)
        assert first.playbook.changed > 0
        assert (lab.lab_dir / "pki" / "ca.crt").is_file()
        assert (lab.lab_dir / "pki" / "sae" / "sae-a0.key").is_file()
        assert (lab.lab_dir / "pki" / "host.crt").is_file()
        ca_before = (lab.lab_dir / "pki" / "ca.crt").read_bytes()

        # 2. Second deploy through the CLI: PLAY RECAP printed, nothing changed.
        capsys.readouterr()
        assert main(["deploy", str(lab.path)]) == 0
        out = capsys.readouterr().out
        assert "PLAY RECAP" in out
        recap = [ln for ln in out.splitlines() if " : ok=" in ln]
        assert len(recap) == len(lab.nodes)
        assert all(" changed=0 " in ln and " failed=0 " in ln for ln in recap), recap
        assert "changed=0" in out.splitlines()[-1]
        assert (lab.lab_dir / "pki" / "ca.crt").read_bytes() == ca_before  # not re-issued

        # 3. Drift is repaired: a lost p2p address, a dead supervisord.
        ns = lab.namespace("km1")
        in_node(ns, "ip", "addr", "flush", "dev", "eth2")
        pid = in_node(ns, first_python(lab), *SUPERVISORCTL.split(), "pid").stdout.strip()
        os.kill(int(pid), 15)
        _wait_gone(int(pid))  # it stops its programs first: a rollout before would see it
        # Only the role that owns both (keeps the test short as site.yml grows).
        base_only = tmp_path / "base.yml"
        base_only.write_text("- name: Base\n  hosts: all\n  gather_facts: false\n"
                             "  roles:\n    - role: common\n")
        third = deploy(lab.path, log=lambda _: None, playbook=base_only)
        assert third.ok
        assert third.playbook.recap["km1"]["changed"] >= 2
        assert third.playbook.recap["km0"]["changed"] == 0
        assert "10.10.2.1/30" in in_node(ns, "ip", "-4", "addr", "show", "dev", "eth2").stdout
        new_pid = in_node(ns, first_python(lab), *SUPERVISORCTL.split(), "pid").stdout.strip()
        assert new_pid.isdigit() and new_pid != pid

        # 4. A failing playbook makes deploy exit non-zero with the failed hosts named.
        failing = tmp_path / "fail.yml"
        failing.write_text(
            "- name: Fail on purpose\n  hosts: km2\n  gather_facts: false\n  tasks:\n"
            "    - name: Fail\n      ansible.builtin.fail:\n        msg: failed on purpose\n")
        capsys.readouterr()
        assert main(["deploy", str(lab.path), "--playbook", str(failing)]) == 1
        captured = capsys.readouterr()
        assert "failed on purpose" in captured.out
        assert "FAILED" in captured.err and "km2" in captured.err

        pids = [p for ps in lab_pids(lab).values() for p in ps]
        assert pids, "supervisord and mosquitto should run in the lab's namespaces"
    finally:
        NETNS.down(lab, log=lambda _: None)

    # 5. down leaves no namespace, bridge, node config or process of the lab.
    assert not {ns for ns in netns.namespaces() if ns.startswith("clab-depline3-")}
    assert subprocess.run(["ip", "link", "show", netns.bridge_name(lab)],
                          capture_output=True).returncode != 0
    for node in lab.nodes:
        assert not (Path("/etc/netns") / lab.namespace(node)).exists()
    for p in pids:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        assert b"supervisord" not in cmdline and b"mosquitto" not in cmdline, p


def first_python(lab) -> str:
    import yaml

    from qkdtwin.runtime.inventory import inventory_path

    inv = yaml.safe_load(inventory_path(lab).read_text())
    return inv["all"]["vars"]["qkdtwin_python"]


def _wait_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still there after {timeout:g} s"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
