"""The `clab` runtime: a lab as containers, driven through the `containerlab` command.

- `up`: `containerlab deploy -t <lab>.clab.yml`, then the declared link impairments with
  `containerlab tools netem set` (on both ends of a link, like the netns runtime), then
  (Runtime.up) the inventory (same shape as the netns runtime's, `community.docker.docker`
  connection; written after the deploy, which leaves containerlab's own in its place).
- `down`: `containerlab destroy -t <lab>.clab.yml --cleanup` (removes `clab-<lab>/` too).
- `status`: `containerlab inspect -t <lab>.clab.yml --format json`, joined with the topology.

Every command line is built by a pure `*_argv()` function so tests can check them for every
lab; commands run through a `Runner` (`ClabRuntime(run=...)`) so tests can replace it.
Missing containerlab, a missing or stopped Docker engine and missing images are reported as
one clear line each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.runtime.base import Log, Runtime, UpResult
from qkdtwin.topology import Lab, Link

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]
Which = Callable[[str], str | None]  # shutil.which

CONTAINERLAB = "containerlab"
DOCKER = "docker"
# Where images/Dockerfile.node puts the services' interpreter and the node's state.
NODE_PYTHON = "/opt/qkdtwin/venv/bin/python"
NODE_DATA_DIR = "/var/lib/qkdtwin"
DEFAULT_IMAGE = "qkdtwin/node:latest"
INSTALL_HINT = "https://containerlab.dev/install/"
TIMEOUT_S = 900  # a deploy of a big lab pulls nothing but still creates many containers


class ClabError(UserError):
    """containerlab or Docker is missing or failed."""


# --------------------------------------------------------------------------- command lines


def deploy_argv(lab: Lab, reconfigure: bool = False) -> list[str]:
    argv = [CONTAINERLAB, "deploy", "-t", str(lab.path)]
    return argv + ["--reconfigure"] if reconfigure else argv


def destroy_argv(lab: Lab) -> list[str]:
    return [CONTAINERLAB, "destroy", "-t", str(lab.path), "--cleanup"]


def inspect_argv(lab: Lab) -> list[str]:
    return [CONTAINERLAB, "inspect", "-t", str(lab.path), "--format", "json"]


def _num(v: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5' (containerlab parses Go durations and floats)."""
    return f"{v:g}"


def netem_argv(lab: Lab, node: str, interface: str, imp: dict[str, float]) -> list[str]:
    """`containerlab tools netem set` for one interface; `imp` as in `vars.impairment`.

    containerlab takes delay/jitter as durations, loss in percent and rate in kbit/s.
    """
    argv = [CONTAINERLAB, "tools", "netem", "set", "-n", lab.namespace(node), "-i", interface]
    if imp.get("delay_ms"):
        argv += ["--delay", f"{_num(imp['delay_ms'])}ms"]
        if imp.get("jitter_ms"):
            argv += ["--jitter", f"{_num(imp['jitter_ms'])}ms"]
    if imp.get("loss_percent"):
        argv += ["--loss", _num(imp["loss_percent"])]
    if imp.get("rate_mbit"):
        argv += ["--rate", str(max(1, round(imp["rate_mbit"] * 1000)))]
    return argv


def netem_commands(lab: Lab) -> list[tuple[Link, list[str]]]:
    """One `netem set` per end of every link with a non-empty impairment."""
    out = []
    for link in lab.links:
        imp = {k: v for k, v in link.impairment.items() if v}
        if not imp:
            continue
        for end in link.endpoints:
            out.append((link, netem_argv(lab, end.node, end.interface, imp)))
    return out


def lab_images(lab: Lab) -> list[str]:
    return sorted({n.image or DEFAULT_IMAGE for n in lab.nodes.values()})


# --------------------------------------------------------------------------- running


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError as exc:
        raise ClabError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClabError(f"`{' '.join(argv)}` did not finish within {TIMEOUT_S}s") from exc


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(f"  {ln}" for ln in text.strip().splitlines()[-lines:])


def _check(proc: subprocess.CompletedProcess, argv: Sequence[str]) -> str:
    if proc.returncode != 0:
        detail = _tail(proc.stderr or proc.stdout or "") or "  (no output)"
        raise ClabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{detail}")
    return proc.stdout


def require_tools(lab: Lab | None = None, run: Runner | None = None,
                  which: Which | None = None) -> None:
    """containerlab on PATH, a Docker engine that answers, and (with a lab) its images."""
    run, which = run or _run, which or shutil.which
    if which(CONTAINERLAB) is None:
        raise ClabError(f"containerlab is not installed (not on PATH); install it "
                        f"({INSTALL_HINT}) or use the default netns runtime")
    if which(DOCKER) is None:
        raise ClabError("Docker is not installed (no `docker` on PATH); the clab runtime "
                        "needs a Docker engine (Debian: apt-get install docker.io)")
    proc = run([DOCKER, "info", "--format", "{{.ServerVersion}}"])
    if proc.returncode != 0:
        raise ClabError("the Docker engine does not answer (is dockerd running? "
                        "scripts/docker-up.sh starts one):\n"
                        + (_tail(proc.stderr or proc.stdout or "") or "  (no output)"))
    if lab is None:
        return
    missing = [img for img in lab_images(lab)
               if run([DOCKER, "image", "inspect", "--format", "{{.Id}}", img]).returncode]
    if missing:
        raise ClabError(f"image(s) missing: {', '.join(missing)}; build them with "
                        f"`make images`")


def parse_inspect(text: str, lab: Lab) -> dict[str, dict[str, Any]]:
    """containerlab's inspect JSON -> {container name: entry} for this lab's containers.

    Accepts the shapes of the containerlab releases in use: `{"containers": [...]}` (up to
    0.6x), `{"<lab>": [...]}` (grouped by lab, later releases), a bare list, and `{}` or
    empty output for a lab with no containers.
    """
    text = text.strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClabError(f"containerlab inspect: output is not JSON ({exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("containers"), list):
        entries = data["containers"]
    elif isinstance(data, dict):
        entries = [e for v in data.values() if isinstance(v, list) for e in v]
    elif isinstance(data, list):
        entries = data
    else:
        raise ClabError("containerlab inspect: unexpected JSON shape")
    prefix = lab.namespace("")
    out = {}
    for e in entries:
        if isinstance(e, dict) and str(e.get("name", "")).startswith(prefix):
            out[e["name"]] = e
    return out


def _inspect(lab: Lab, run: Runner) -> dict[str, dict[str, Any]]:
    argv = inspect_argv(lab)
    proc = run(argv)
    if proc.returncode != 0:
        # Old releases exit non-zero when no container of the lab exists.
        if "no containers found" in (proc.stderr + proc.stdout).lower():
            return {}
        _check(proc, argv)
    return parse_inspect(proc.stdout, lab)


class ClabRuntime(Runtime):
    """Containers through containerlab and Docker."""

    name = "clab"
    description = "containerlab + Docker"
    exec_tool = DOCKER

    def __init__(self, run: Runner | None = None, which: Which | None = None) -> None:
        self.run = run or _run
        self.which = which or shutil.which

    def create(self, lab: Lab, log: Log = print) -> UpResult:
        """Deploy the lab (unless it already runs) and apply the impairments."""
        run = self.run
        require_tools(lab, run, self.which)
        result = UpResult()
        present = _inspect(lab, run)
        wanted = {lab.namespace(n) for n in lab.nodes}
        running = {name for name, e in present.items() if e.get("state") == "running"}
        if wanted <= running:
            log(f"lab {lab.name}: all {len(wanted)} containers already running")
        else:
            # A partly deployed lab cannot be deployed again; --reconfigure recreates it.
            argv = deploy_argv(lab, reconfigure=bool(present))
            log(f"clab: {' '.join(argv)}")
            _check(run(argv), argv)
            result.deployed = True
        for link, argv in netem_commands(lab):
            proc = run(argv)
            if proc.returncode != 0:
                # A kernel without sch_netem: the lab works, the impairment is not applied.
                result.warnings.append(
                    f"link {link.id}: {argv[5]}:{argv[7]}: impairment not applied: "
                    f"{(proc.stderr or proc.stdout).strip()[-200:]}")
            else:
                result.impairments += 1
                log(f"link {link.id}: {argv[5]} {argv[7]}: netem {' '.join(argv[8:])}")
        return result

    def up_summary(self, lab: Lab, result: UpResult) -> str:
        return (f"lab {lab.name} is up (clab): {len(lab.nodes)} containers, "
                f"{len(lab.links)} links, {result.impairments} impairment(s) set"
                + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))

    def down(self, lab: Lab, log: Log = print) -> None:
        require_tools(None, self.run, self.which)
        argv = destroy_argv(lab)
        log(f"clab: {' '.join(argv)}")
        _check(self.run(argv), argv)
        log(f"down: lab {lab.name} destroyed (containers, links, {lab.lab_dir.name}/)")

    def status(self, lab: Lab) -> dict[str, Any]:
        """Live state of the lab, the same top-level shape as the netns runtime's status."""
        require_tools(None, self.run, self.which)
        return _status(lab, _inspect(lab, self.run), self.name)

    def format_status(self, st: dict[str, Any]) -> str:
        return format_status(st)

    def exec_argv(self, lab: Lab, node: str, argv: Sequence[str]) -> list[str]:
        return [DOCKER, "exec", self.node_name(lab, node), *argv]

    def node_python(self) -> str:
        return NODE_PYTHON

    def connection_vars(self, lab: Lab, node: str, python: str) -> dict[str, Any]:
        return {"ansible_connection": "community.docker.docker",
                "ansible_host": self.node_name(lab, node)}

    def data_dir(self, lab: Lab, node: str) -> str:
        return NODE_DATA_DIR


def _status(lab: Lab, present: dict[str, dict[str, Any]], runtime: str) -> dict[str, Any]:
    nodes = []
    for n in lab.nodes.values():
        cname = lab.namespace(n.name)
        e = present.get(cname, {})
        nodes.append({
            "name": n.name, "container": cname, "roles": list(n.roles),
            "mgmt_ipv4": e.get("ipv4_address") or f"{n.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}",
            "image": e.get("image") or n.image or DEFAULT_IMAGE,
            "state": e.get("state") or "missing",
        })
    links = [{
        "id": lk.id,
        "endpoints": [f"{e.node}:{e.interface}" for e in lk.endpoints],
        "ipv4": [e.ipv4 for e in lk.endpoints],
        "qkd": lk.qkd is not None,
        "model": lk.qkd_model,
        "label": lk.qkd_label,
        "impairment": {k: v for k, v in lk.impairment.items() if v},
    } for lk in lab.links]
    running = sum(1 for n in nodes if n["state"] == "running")
    return {
        "lab": lab.name, "runtime": runtime, "topology": str(lab.path),
        "lab_dir": str(lab.lab_dir),
        "state": "up" if running == len(nodes) else ("down" if running == 0 else "partial"),
        "nodes": nodes, "links": links, "warnings": [],
    }


def format_status(st: dict[str, Any]) -> str:
    rows = [("NODE", "CONTAINER", "ROLES", "MGMT IPV4", "IMAGE", "STATE")]
    rows += [(n["name"], n["container"], ",".join(n["roles"]), n["mgmt_ipv4"], n["image"],
              n["state"]) for n in st["nodes"]]
    lines = [f"lab {st['lab']} ({st['runtime']}): {st['state']}"]
    lines += _table(rows)
    lines.append("")
    lrows = [("LINK", "ENDPOINTS", "QKD MODEL", "IPV4", "IMPAIRMENT (netem, both ends)")]
    lrows += [(lk["id"], " ".join(lk["endpoints"]), lk.get("label") or "-",
               " ".join(a or "-" for a in lk["ipv4"]),
               ",".join(f"{k}={v:g}" for k, v in lk["impairment"].items()) or "-")
              for lk in st["links"]]
    lines += _table(lrows)
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
