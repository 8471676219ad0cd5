"""The clab runtime: the command lines sent to containerlab for every lab, its errors, and
the inventory it writes (same groups and vars as the netns runtime's but the connection)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from qkdtwin.errors import UserError
from qkdtwin.runtime import clab
from qkdtwin.runtime.inventory import build_inventory
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import load_lab

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LABS = sorted(p.name.removesuffix(".clab.yml") for p in (ROOT / "labs").glob("*.clab.yml"))
BIN = ROOT / ".venv" / "bin"

# Vars that may differ between runtimes: how Ansible reaches a node, and where its state is.
CONNECTION_HOST_VARS = {"ansible_connection", "ansible_host", "ansible_python_interpreter",
                        "qkdtwin_netns", "qkdtwin_data_dir"}
RUNTIME_ALL_VARS = {"qkdtwin_runtime", "qkdtwin_python"}


def copy_lab(name: str, dest: Path):
    """A lab loaded from a copy, so lab artefacts (clab-<lab>/) land in a temp dir."""
    for suffix in (".clab.yml", ".users.yml"):
        src = ROOT / "labs" / f"{name}{suffix}"
        if src.exists():
            shutil.copy(src, dest / src.name)
    return load_lab(dest / f"{name}.clab.yml")


@pytest.fixture(params=LABS)
def lab(request, tmp_path):
    return copy_lab(request.param, tmp_path)


@pytest.fixture
def line3(tmp_path):
    return copy_lab("line3", tmp_path)


class FakeRunner:
    """Records every argv; answers docker and containerlab like a healthy host would."""

    def __init__(self, inspect: object = None, fail: dict[str, tuple[int, str]] | None = None,
                 missing_images: Sequence[str] = ()):
        self.calls: list[list[str]] = []
        self.inspect = inspect if inspect is not None else {}
        self.fail = fail or {}  # argv prefix (joined by spaces) -> (exit code, stderr)
        self.missing_images = set(missing_images)

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        argv = list(argv)
        self.calls.append(argv)
        line = " ".join(argv)
        for prefix, (code, err) in self.fail.items():
            if line.startswith(prefix):
                return subprocess.CompletedProcess(argv, code, "", err)
        out = ""
        if argv[:2] == ["docker", "image"] and argv[-1] in self.missing_images:
            return subprocess.CompletedProcess(argv, 1, "", f"No such image: {argv[-1]}")
        if argv[:2] == ["containerlab", "inspect"]:
            out = json.dumps(self.inspect)
        return subprocess.CompletedProcess(argv, 0, out, "")

    def clab_calls(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "containerlab"]


def which_all(name: str) -> str:
    return f"/usr/bin/{name}"


def running(lab, nodes=None, state="running") -> dict:
    """containerlab >= 0.6x inspect JSON: grouped by lab name."""
    nodes = list(lab.nodes) if nodes is None else nodes
    return {lab.name: [{
        "lab_name": lab.name, "name": lab.namespace(n), "container_id": "0123456789ab",
        "image": lab.nodes[n].image or "qkdtwin/node:latest", "kind": "linux", "state": state,
        "ipv4_address": f"{lab.nodes[n].mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}",
        "ipv6_address": "N/A"} for n in nodes]}


# --------------------------------------------------------------------------- command lines


def test_deploy_destroy_inspect_argv(lab):
    t = str(lab.path)
    assert clab.deploy_argv(lab) == ["containerlab", "deploy", "-t", t]
    assert clab.deploy_argv(lab, reconfigure=True) == [
        "containerlab", "deploy", "-t", t, "--reconfigure"]
    assert clab.destroy_argv(lab) == ["containerlab", "destroy", "-t", t, "--cleanup"]
    assert clab.inspect_argv(lab) == ["containerlab", "inspect", "-t", t, "--format", "json"]


def test_netem_for_every_impaired_link_end(lab):
    cmds = clab.netem_commands(lab)
    impaired = [lk for lk in lab.links if any(lk.impairment.values())]
    assert impaired, "every shipped lab declares impairments"
    assert len(cmds) == 2 * len(impaired)
    for link, argv in cmds:
        assert argv[:4] == ["containerlab", "tools", "netem", "set"]
        ends = {(lab.namespace(e.node), e.interface) for e in link.endpoints}
        assert (argv[argv.index("-n") + 1], argv[argv.index("-i") + 1]) in ends
        imp = link.impairment
        if imp.get("delay_ms"):
            assert argv[argv.index("--delay") + 1] == f"{imp['delay_ms']:g}ms"
        else:
            assert "--delay" not in argv
        if imp.get("rate_mbit"):
            assert int(argv[argv.index("--rate") + 1]) == round(imp["rate_mbit"] * 1000)
        else:
            assert "--rate" not in argv
    # both ends of each impaired link, each once
    targets = [(a[a.index("-n") + 1], a[a.index("-i") + 1]) for _, a in cmds]
    assert len(set(targets)) == len(targets)


def test_netem_exact_line3(line3):
    got = [" ".join(a) for _, a in clab.netem_commands(line3)]
    assert got == [
        "containerlab tools netem set -n clab-line3-km0 -i eth1 --delay 1ms",
        "containerlab tools netem set -n clab-line3-km1 -i eth1 --delay 1ms",
        "containerlab tools netem set -n clab-line3-km1 -i eth2 --delay 1ms --rate 100000",
        "containerlab tools netem set -n clab-line3-km2 -i eth1 --delay 1ms --rate 100000",
    ]


def test_netem_all_parameters(line3):
    argv = clab.netem_argv(line3, "km0", "eth1", {"delay_ms": 12.5, "jitter_ms": 2.0,
                                                  "loss_percent": 0.1, "rate_mbit": 0.5})
    assert argv[4:] == ["-n", "clab-line3-km0", "-i", "eth1", "--delay", "12.5ms",
                        "--jitter", "2ms", "--loss", "0.1", "--rate", "500"]
    # zero values are "no impairment", not a flag
    assert clab.netem_argv(line3, "km0", "eth1", {"delay_ms": 0.0, "loss_percent": 0.0})[8:] \
        == []


# --------------------------------------------------------------------------- up / down / status


def test_up_deploys_then_impairs_then_writes_inventory(lab):
    run = FakeRunner()
    logs: list[str] = []
    result = clab.ClabRuntime(run=run, which=which_all).up(lab, log=logs.append)
    assert result.deployed
    assert run.calls[0][:2] == ["docker", "info"]
    images = {c[-1] for c in run.calls if c[:3] == ["docker", "image", "inspect"]}
    assert images == {"qkdtwin/node:latest", "qkdtwin/broker:latest"}
    calls = run.clab_calls()
    assert calls[0] == clab.inspect_argv(lab)
    assert calls[1] == clab.deploy_argv(lab)
    assert calls[2:] == [a for _, a in clab.netem_commands(lab)]
    assert result.impairments == len(calls) - 2 and not result.warnings
    inv = yaml.safe_load((lab.lab_dir / "ansible-inventory.yml").read_text())
    assert inv["all"]["vars"]["qkdtwin_runtime"] == "clab"
    assert inv["all"]["vars"]["qkdtwin_python"] == clab.NODE_PYTHON
    for node, hv in inv["all"]["hosts"].items():
        assert hv["ansible_connection"] == "community.docker.docker"
        assert hv["ansible_host"] == f"clab-{lab.name}-{node}"
        assert hv["qkdtwin_data_dir"] == clab.NODE_DATA_DIR


def test_up_overwrites_containerlabs_own_inventory(line3):
    line3.lab_dir.mkdir()
    clab_inv = line3.lab_dir / "ansible-inventory.yml"
    clab_inv.write_text("all:\n  children:\n    linux:\n      hosts: {}\n")
    clab.ClabRuntime(run=FakeRunner(), which=which_all).up(line3, log=lambda s: None)
    assert "community.docker.docker" in clab_inv.read_text()


def test_up_skips_deploy_when_everything_runs(line3):
    run = FakeRunner(inspect=running(line3))
    result = clab.ClabRuntime(run=run, which=which_all).up(line3, log=lambda s: None)
    assert not result.deployed
    assert not [c for c in run.clab_calls() if c[1] == "deploy"]
    assert [c for c in run.clab_calls() if c[1] == "tools"]  # impairments re-applied


def test_up_redeploys_a_partial_lab(line3):
    run = FakeRunner(inspect=running(line3, nodes=["km0", "broker"]))
    clab.ClabRuntime(run=run, which=which_all).up(line3, log=lambda s: None)
    assert clab.deploy_argv(line3, reconfigure=True) in run.clab_calls()


def test_up_with_stopped_containers_redeploys(line3):
    run = FakeRunner(inspect=running(line3, state="exited"))
    assert clab.ClabRuntime(run=run, which=which_all).up(line3, log=lambda s: None).deployed


def test_netem_failure_is_a_warning(line3):
    run = FakeRunner(fail={"containerlab tools netem set -n clab-line3-km1 -i eth2":
                           (1, "Error: no such file or directory (sch_netem missing?)")})
    result = clab.ClabRuntime(run=run, which=which_all).up(line3, log=lambda s: None)
    assert len(result.warnings) == 1
    assert "km1-km2" in result.warnings[0] and "sch_netem" in result.warnings[0]
    assert result.impairments == 3


def test_deploy_failure_is_a_clear_error(line3):
    run = FakeRunner(fail={"containerlab deploy": (1, "line1\nError: permission denied")})
    with pytest.raises(clab.ClabError, match="(?s)containerlab deploy .*failed.*permission denied"):
        clab.ClabRuntime(run=run, which=which_all).up(line3, log=lambda s: None)
    assert not (line3.lab_dir / "ansible-inventory.yml").exists()


def test_down_sends_destroy_cleanup(line3):
    run = FakeRunner()
    clab.ClabRuntime(run=run, which=which_all).down(line3, log=lambda s: None)
    assert run.clab_calls() == [clab.destroy_argv(line3)]


def test_status(line3):
    run = FakeRunner(inspect=running(line3, nodes=["broker", "ctl", "km0"]))
    st = clab.ClabRuntime(run=run, which=which_all).status(line3)
    assert run.clab_calls() == [clab.inspect_argv(line3)]
    assert st["runtime"] == "clab" and st["state"] == "partial"
    by = {n["name"]: n for n in st["nodes"]}
    assert by["km0"]["state"] == "running" and by["km2"]["state"] == "missing"
    assert by["km0"]["container"] == "clab-line3-km0"
    assert by["km0"]["mgmt_ipv4"] == "172.31.3.20/24"
    text = clab.format_status(st)
    assert "clab-line3-km2" in text and "missing" in text and "delay_ms=1" in text
    st = clab.ClabRuntime(run=FakeRunner(inspect=running(line3)), which=which_all).status(line3)
    assert st["state"] == "up"
    st = clab.ClabRuntime(run=FakeRunner(inspect={}), which=which_all).status(line3)
    assert st["state"] == "down"


@pytest.mark.parametrize("shape", ["grouped", "containers", "list", "empty"])
def test_parse_inspect_shapes(line3, shape):
    entries = running(line3)["line3"] + [{"name": "clab-other-km0", "state": "running"}]
    data = {"grouped": {"line3": entries}, "containers": {"containers": entries},
            "list": entries, "empty": {}}[shape]
    got = clab.parse_inspect(json.dumps(data), line3)
    if shape == "empty":
        assert got == {}
    else:
        assert set(got) == {f"clab-line3-{n}" for n in line3.nodes}


def test_parse_inspect_garbage(line3):
    with pytest.raises(clab.ClabError, match="not JSON"):
        clab.parse_inspect("+----+ table", line3)


def test_old_containerlab_no_containers_exit(line3):
    run = FakeRunner(fail={"containerlab inspect": (1, "INFO no containers found")})
    assert clab.ClabRuntime(run=run, which=which_all).status(line3)["state"] == "down"


# --------------------------------------------------------------------------- missing tools


def test_missing_containerlab(line3):
    run = FakeRunner()
    with pytest.raises(UserError, match="containerlab is not installed.*netns"):
        clab.ClabRuntime(run=run,
                         which=lambda n: None if n == "containerlab" else "/x").up(line3)
    assert run.calls == []


def test_missing_docker(line3):
    with pytest.raises(UserError, match="Docker is not installed.*docker.io"):
        clab.ClabRuntime(run=FakeRunner(),
                         which=lambda n: None if n == "docker" else "/x").down(line3)


def test_docker_engine_down(line3):
    run = FakeRunner(fail={"docker info": (1, "Cannot connect to the Docker daemon")})
    with pytest.raises(UserError, match="(?s)Docker engine does not answer.*Cannot connect"):
        clab.ClabRuntime(run=run, which=which_all).status(line3)
    assert run.clab_calls() == []


def test_missing_image(line3):
    run = FakeRunner(missing_images=["qkdtwin/broker:latest"])
    with pytest.raises(UserError, match="qkdtwin/broker:latest.*make images"):
        clab.ClabRuntime(run=run, which=which_all).up(line3)
    assert run.clab_calls() == []


def test_cli_errors_are_one_line_without_traceback(line3, monkeypatch, capsys):
    """Through the real runner: no containerlab on PATH -> exit 2 and one clear message."""
    from qkdtwin.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        code = main(["up", str(line3.path), "--runtime", "clab"])
    except SystemExit as exc:  # --runtime not wired into `up` yet
        pytest.fail(f"`qkdtwin up --runtime clab` rejected: exit {exc.code}")
    err = capsys.readouterr().err
    assert code == 2
    assert "containerlab is not installed" in err and "Traceback" not in err


# --------------------------------------------------------------------------- inventory


def test_inventory_same_shape_as_netns(lab):
    netns = build_inventory(lab, get_runtime("netns"), python="/srv/venv/bin/python")["all"]
    clabi = build_inventory(lab, get_runtime("clab"), python=clab.NODE_PYTHON)["all"]
    assert clabi["children"] == netns["children"]
    assert set(clabi["vars"]) == set(netns["vars"])
    for k in set(netns["vars"]) - RUNTIME_ALL_VARS:
        assert clabi["vars"][k] == netns["vars"][k], k
    assert clabi["vars"]["qkdtwin_runtime"] == "clab"
    assert set(clabi["hosts"]) == set(netns["hosts"])
    for host, nv in netns["hosts"].items():
        cv = clabi["hosts"][host]
        assert set(cv) - CONNECTION_HOST_VARS == set(nv) - CONNECTION_HOST_VARS, host
        for k in set(nv) - CONNECTION_HOST_VARS:
            assert cv[k] == nv[k], (host, k)
        assert cv["ansible_connection"] == "community.docker.docker"
        assert cv["ansible_host"] == lab.namespace(host)
        assert "qkdtwin_netns" not in cv


def _ansible(tool: str) -> str:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `make venv`")
    return str(exe)


def _ansible_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-tmp-clab-test", "ANSIBLE_NOCOLOR": "1"}


def test_ansible_inventory_accepts_it(line3):
    clab.ClabRuntime(run=FakeRunner(), which=which_all).up(line3, log=lambda s: None)
    path = line3.lab_dir / "ansible-inventory.yml"
    proc = subprocess.run([_ansible("ansible-inventory"), "-i", str(path), "--list"],
                          capture_output=True, text=True, cwd=ROOT, env=_ansible_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # A node named like its role (broker) is also a group name: Ansible notes it, harmlessly.
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln
                and "Found both group and host with same name" not in ln]
    assert not warnings, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["km"]["hosts"]) == ["km0", "km1", "km2"]
    assert data["broker"]["hosts"] == ["broker"]
    hv = data["_meta"]["hostvars"]["km1"]
    assert hv["ansible_connection"] == "community.docker.docker"
    assert hv["ansible_host"] == "clab-line3-km1"
    assert [q["id"] for q in hv["qkdtwin_node_qkd_links"]] == ["km0-km1", "km1-km2"]


def test_site_playbook_syntax_with_clab_inventory(line3):
    site = ROOT / "playbooks" / "site.yml"
    if not site.exists():
        pytest.skip("playbooks/site.yml not written yet (roles/deploy issue)")
    clab.ClabRuntime(run=FakeRunner(), which=which_all).up(line3, log=lambda s: None)
    path = line3.lab_dir / "ansible-inventory.yml"
    proc = subprocess.run([_ansible("ansible-playbook"), "-i", str(path), "--syntax-check",
                           str(site)], capture_output=True, text=True, cwd=ROOT,
                          env=_ansible_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_runtime_clab_runs_the_playbook_on_the_docker_inventory(line3, monkeypatch,
                                                                      tmp_path):
    """`qkdtwin deploy --runtime clab`: containerlab up, then ansible-playbook with the clab
    inventory (a probe playbook on localhost reads the nodes' vars)."""
    from qkdtwin import deploy as deploy_mod

    run = FakeRunner()
    monkeypatch.setattr(clab, "_run", run)
    monkeypatch.setattr(clab.shutil, "which", which_all)
    probe = tmp_path / "probe.yml"
    probe.write_text(yaml.safe_dump([{
        "name": "probe", "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "the clab inventory reaches nodes with docker exec",
                   "ansible.builtin.assert": {"that": [
                       "hostvars['km0'].ansible_connection == 'community.docker.docker'",
                       "hostvars['km0'].ansible_host == 'clab-line3-km0'",
                       "qkdtwin_runtime == 'clab'",
                       "groups['km'] | length == 3"]}}]}]))
    logs: list[str] = []
    result = deploy_mod.deploy(line3.path, log=logs.append, playbook=probe, runtime="clab")
    assert result.ok, "\n".join(logs)
    assert clab.deploy_argv(line3) in run.clab_calls()
    inv = yaml.safe_load(result.inventory.read_text())
    assert inv["all"]["vars"]["qkdtwin_runtime"] == "clab"
    assert inv["all"]["vars"]["qkdtwin_python"] == clab.NODE_PYTHON
