"""`qkdtwin deploy LAB`: bring the lab up, write its inventory and run playbooks/site.yml.

The playbook's output is condensed while it streams: one line per task with how many hosts
were ok/changed/skipped/failed, every error in full, and Ansible's PLAY RECAP at the end.
`--verbose` passes Ansible's own output through unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qkdtwin.errors import UserError
from qkdtwin.runtime.registry import DEFAULT_RUNTIME, add_runtime_argument, get_runtime
from qkdtwin.topology import load_lab

Log = Callable[[str], None]

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_PLAYBOOK = REPO_ROOT / "playbooks" / "site.yml"
# The static inventory every lab's generated one is combined with: its directory holds the
# site's group_vars (inventory/group_vars/), which Ansible loads beside each inventory source.
SITE_INVENTORY = REPO_ROOT / "inventory" / "groups.yml"

# `km0   : ok=11   changed=0    unreachable=0    failed=0    skipped=4 ...`
_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")
_COUNT = re.compile(r"(\w+)=(\d+)")
# `ok: [km0]`, `changed: [km0] => (item=...)`, `fatal: [km0]: FAILED! => ...`,
# `changed: [km0 -> localhost]`
_HOST_STATUS = re.compile(r"^(ok|changed|skipping|fatal|failed|unreachable): \[([^\]\s]+)")
_HEADER = re.compile(r"^(PLAY|TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**$")


@dataclass
class PlaybookResult:
    returncode: int
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def total(self, key: str) -> int:
        return sum(counts.get(key, 0) for counts in self.recap.values())

    @property
    def changed(self) -> int:
        return self.total("changed")

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, c in self.recap.items()
                      if c.get("failed", 0) or c.get("unreachable", 0))


def parse_recap(lines: Iterable[str]) -> dict[str, dict[str, int]]:
    """Host -> counts from the PLAY RECAP section of Ansible's default output."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap:
            m = _RECAP_LINE.match(line.strip())
            if m:
                recap[m["host"]] = {k: int(v) for k, v in _COUNT.findall(m["counts"])}
            elif line.strip():
                in_recap = False
    return recap


class _Condenser:
    """Turns Ansible's default output into one line per task, errors and the recap."""

    _RANK = {"skipping": 0, "ok": 1, "changed": 2, "unreachable": 3, "failed": 3, "fatal": 3}

    def __init__(self, log: Log, start: float) -> None:
        self.log = log
        self.start = start
        self.task: str | None = None
        self.task_start = start
        self.hosts: dict[str, str] = {}
        self.in_error = False
        self.in_recap = False

    def _flush_task(self) -> None:
        if self.task is None:
            return
        counts: dict[str, int] = {}
        for status in self.hosts.values():
            key = {"fatal": "failed", "skipping": "skipped"}.get(status, status)
            counts[key] = counts.get(key, 0) + 1
        summary = " ".join(f"{k}={counts[k]}" for k in
                           ("ok", "changed", "skipped", "failed", "unreachable") if k in counts)
        took = time.monotonic() - self.task_start
        elapsed = time.monotonic() - self.start
        self.log(f"[{elapsed:5.1f}s] {self.task}  {summary or 'no hosts'} ({took:.1f}s)")
        self.task = None
        self.hosts = {}

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if self.in_recap:
            if line.strip():
                self.log(line)
            return
        header = _HEADER.match(line)
        if header or line.startswith("PLAY RECAP"):
            self._flush_task()
            self.in_error = False
            if line.startswith("PLAY RECAP"):
                self.in_recap = True
                self.log(line)
            elif line.startswith("PLAY ["):
                self.log(f"== {header['name']}")
            else:
                prefix = "handler " if line.startswith("RUNNING HANDLER") else ""
                self.task = prefix + header["name"]
                self.task_start = time.monotonic()
            return
        if line.startswith("included: ") and " for " in line:
            for host in line.rsplit(" for ", 1)[1].split(","):
                self.hosts.setdefault(host.strip(), "ok")
            return
        status = _HOST_STATUS.match(line)
        if status:
            kind, host = status.groups()
            if self._RANK[kind] >= self._RANK.get(self.hosts.get(host, "skipping"), 0):
                self.hosts[host] = kind
            self.in_error = kind in ("fatal", "failed", "unreachable") and "...ignoring" not in line
            if self.in_error:
                self.log(line)
            return
        if self.in_error and (line.startswith((" ", "\t")) or not line.strip()):
            if line.strip():
                self.log(line)
            return
        self.in_error = False
        # Nodes named like their role (broker, sdn...) are also groups of that name by the
        # inventory's design; Ansible's warning about it is noise here (-v shows it).
        if "Found both group and host with same name" in line:
            return
        if line.startswith(("[WARNING]", "[ERROR]", "ERROR!", "[DEPRECATION")):
            self.log(line)

    def close(self) -> None:
        self._flush_task()


def ansible_playbook_executable() -> str:
    """ansible-playbook of the running interpreter's environment (the project venv)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise UserError("ansible-playbook not found: install the project with its dev "
                        "dependencies (make install)")
    return found


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        # The project's modules (qkdtwin_files); playbooks/library links there too.
        "ANSIBLE_LIBRARY": str(REPO_ROOT / "plugins" / "modules"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PYTHONUNBUFFERED": "1",
    })
    # The venv's bin first, so modules and tools find the project's Python packages.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def inventory_args(inventory: Path) -> list[str]:
    """`-i` options for a lab's generated inventory: the site's groups (and group_vars) first,
    so that the lab's own variables and hosts come from the generated file."""
    return ["-i", str(SITE_INVENTORY), "-i", str(inventory)]


def run_playbook(inventory: Path, playbook: Path = SITE_PLAYBOOK, *, log: Log = print,
                 verbose: bool = False, extra_args: list[str] | None = None) -> PlaybookResult:
    """Run ansible-playbook, streaming its progress to `log`; return the recap."""
    if not playbook.is_file():
        raise UserError(f"no such playbook: {playbook}")
    argv = [ansible_playbook_executable(), *inventory_args(inventory), str(playbook),
            *(extra_args or [])]
    start = time.monotonic()
    condenser = None if verbose else _Condenser(log, start)
    lines: list[str] = []
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if condenser is None:
                log(line.rstrip("\n"))
            else:
                condenser.feed(line)
        proc.wait()
    except BaseException:
        # Interrupted: stop ansible-playbook and its workers, then re-raise.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        raise
    if condenser is not None:
        condenser.close()
    return PlaybookResult(proc.returncode, parse_recap(lines), time.monotonic() - start)


@dataclass
class DeployResult:
    lab: str
    inventory: Path
    playbook: PlaybookResult
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.playbook.ok


def deploy(lab_ref: str | Path, *, log: Log = print, verbose: bool = False,
           playbook: Path = SITE_PLAYBOOK, runtime: str = DEFAULT_RUNTIME) -> DeployResult:
    """`up` (which writes the inventory) + ansible-playbook, on the named runtime."""
    start = time.monotonic()
    if not playbook.is_file():  # before touching the lab
        raise UserError(f"no such playbook: {playbook}")
    rt = get_runtime(runtime)
    lab = load_lab(lab_ref)
    up = rt.up(lab, log=log)
    assert up.inventory is not None
    inventory = up.inventory
    for warning in up.warnings:
        log(f"WARNING: {warning}")
    shown = playbook.relative_to(REPO_ROOT) if playbook.is_relative_to(REPO_ROOT) else playbook
    log(f"ansible-playbook {shown}")
    result = run_playbook(inventory, playbook, log=log, verbose=verbose)
    return DeployResult(lab.name, inventory, result, time.monotonic() - start, up.warnings)


def cmd_deploy(args: argparse.Namespace) -> int:
    playbook = Path(args.playbook).resolve() if args.playbook else SITE_PLAYBOOK
    result = deploy(args.lab, verbose=args.verbose, playbook=playbook,
                    runtime=args.runtime)
    pb = result.playbook
    if not result.ok:
        failed = ", ".join(pb.failed_hosts) or "see the output above"
        print(f"qkdtwin deploy: lab {result.lab} FAILED after {result.seconds:.1f} s: "
              f"ansible-playbook exited {pb.returncode} (failed hosts: {failed})",
              file=sys.stderr)
        return 1
    print(f"lab {result.lab} deployed in {result.seconds:.1f} s "
          f"(playbook {pb.seconds:.1f} s): {len(pb.recap)} hosts, changed={pb.changed}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy", help="up + inventory + ansible-playbook playbooks/site.yml")
    p.add_argument("lab", metavar="LAB", help="labs/<lab>.clab.yml or a lab name")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ansible's full output instead of one line per task")
    p.add_argument("--playbook", metavar="PATH",
                   help="another playbook to run instead of playbooks/site.yml")
    add_runtime_argument(p)
    p.set_defaults(func=cmd_deploy)
