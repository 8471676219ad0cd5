"""A stand-in for the `containerlab` command, for hosts without it: the subset qkdtwin's clab
runtime calls, done with `docker` and `ip` the way containerlab does it for `linux` nodes.

    deploy -t FILE [--reconfigure]     containers `clab-<lab>-<node>` (NET_ADMIN) with
                                       `--network none`, a mgmt bridge with eth0 per node at
                                       its mgmt-ipv4, one veth pair per link
    destroy -t FILE --cleanup          containers, bridge, `clab-<lab>/`
    inspect -t FILE --format json      `{"<lab>": [{name, state, image, ipv4_address, ...}]}`
    tools netem set -n NAME -i IF ...  `tc qdisc replace ... netem` in the container's netns

The mgmt network is a host bridge rather than a Docker network, because the test engine
runs without Docker's bridge and iptables (scripts/docker-up.sh). Used by
tests/integration/test_clab_emulated.py through a `containerlab` wrapper put on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from qkdtwin.topology import Lab, load_lab

LABEL = "containerlab"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        sys.exit(f"Error: {' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def short(*parts: str) -> str:
    return "fc" + hashlib.sha1("/".join(parts).encode()).hexdigest()[:10]


def bridge(lab: Lab) -> str:
    return short(lab.name, "br")


def pid(name: str) -> str:
    return sh("docker", "inspect", "-f", "{{.State.Pid}}", name).stdout.strip()


def in_ns(p: str, *argv: str) -> None:
    sh("nsenter", "-t", p, "-n", *argv)


def move(host_if: str, p: str, name: str, addr: str | None = None) -> None:
    sh("ip", "link", "set", host_if, "netns", p)
    in_ns(p, "ip", "link", "set", host_if, "name", name)
    if addr:
        in_ns(p, "ip", "addr", "add", addr, "dev", name)
    in_ns(p, "ip", "link", "set", name, "up")


def containers(lab: Lab) -> list[dict]:
    out = sh("docker", "ps", "-a", "--filter", f"label={LABEL}={lab.name}",
             "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def destroy(lab: Lab, cleanup: bool) -> None:
    names = [c["Names"] for c in containers(lab)]
    if names:
        sh("docker", "rm", "-f", *names)
    if sh("ip", "link", "show", bridge(lab), check=False).returncode == 0:
        sh("ip", "link", "del", bridge(lab))
    for node in lab.nodes:  # host ends die with their peers; leftovers of a crash do not
        sh("ip", "link", "del", short(lab.name, node), check=False)
    if cleanup and lab.lab_dir.exists():
        shutil.rmtree(lab.lab_dir)
    print(f"INFO Destroyed lab {lab.name}: {len(names)} containers")


def deploy(lab: Lab, reconfigure: bool) -> None:
    if containers(lab):
        if not reconfigure:
            sys.exit(f"Error: the '{lab.name}' lab has already been deployed")
        destroy(lab, cleanup=False)
    br = bridge(lab)
    sh("ip", "link", "add", br, "type", "bridge")
    sh("ip", "addr", "add", f"{lab.mgmt_gateway}/{lab.mgmt_subnet.prefixlen}", "dev", br)
    sh("ip", "link", "set", br, "up")
    pids = {}
    for node in lab.nodes.values():
        name = lab.namespace(node.name)
        # containerlab runs linux nodes privileged; this sandbox refuses that, and the
        # nodes only need to manage their own network stack.
        sh("docker", "run", "-d", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
           "--network", "none", "--name", name,
           "--hostname", node.name, "--label", f"{LABEL}={lab.name}",
           "--label", f"clab-node-name={node.name}", node.image or "qkdtwin/node:latest")
        pids[node.name] = p = pid(name)
        host_if = short(lab.name, node.name)
        tmp = short(lab.name, node.name, "eth0")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", tmp)
        move(tmp, p, "eth0", f"{node.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}")
        sh("ip", "link", "set", host_if, "master", br, "up")
    for link in lab.links:
        a, b = short(lab.name, link.id, "a"), short(lab.name, link.id, "b")
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        move(a, pids[link.a.node], link.a.interface)  # addresses: Ansible's job
        move(b, pids[link.b.node], link.b.interface)
    lab.lab_dir.mkdir(parents=True, exist_ok=True)
    # containerlab writes its own inventory here; qkdtwin must replace it afterwards.
    (lab.lab_dir / "ansible-inventory.yml").write_text(
        "all:\n  children:\n    linux:\n      hosts: {}\n")
    print(f"INFO Deployed lab {lab.name}: {len(lab.nodes)} nodes, {len(lab.links)} links")


def inspect(lab: Lab) -> None:
    out = []
    for c in containers(lab):
        node = next((n for n in lab.nodes.values() if lab.namespace(n.name) == c["Names"]),
                    None)
        out.append({"lab_name": lab.name, "name": c["Names"], "image": c["Image"],
                    "kind": "linux", "state": c["State"],
                    "ipv4_address": f"{node.mgmt_ipv4}/{lab.mgmt_subnet.prefixlen}"
                    if node else "N/A"})
    print(json.dumps({lab.name: out} if out else {}, indent=2))


def netem(args: argparse.Namespace) -> None:
    qdisc = ["netem"]
    if args.delay:
        qdisc += ["delay", args.delay] + ([args.jitter] if args.jitter else [])
    if args.loss:
        qdisc += ["loss", f"{args.loss}%"]
    if args.rate:
        qdisc += ["rate", f"{args.rate}kbit"]
    proc = sh("nsenter", "-t", pid(args.node), "-n", "tc", "qdisc", "replace", "dev",
              args.interface, "root", *qdisc, check=False)
    if proc.returncode != 0:
        sys.exit(f"Error: {proc.stderr.strip()}")
    print(f"netem set on {args.node} {args.interface}: {' '.join(qdisc[1:])}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="containerlab")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("deploy", "destroy", "inspect"):
        s = sub.add_parser(name)
        s.add_argument("-t", "--topo", required=True)
        s.add_argument("--reconfigure", action="store_true")
        s.add_argument("--cleanup", action="store_true")
        s.add_argument("--format", default="table")
    tools = sub.add_parser("tools").add_subparsers(dest="tool", required=True)
    ns = tools.add_parser("netem").add_subparsers(dest="op", required=True)
    s = ns.add_parser("set")
    s.add_argument("-n", "--node", required=True)
    s.add_argument("-i", "--interface", required=True)
    for flag in ("--delay", "--jitter", "--loss", "--rate"):
        s.add_argument(flag)
    args = p.parse_args(argv)
    if args.cmd == "tools":
        return netem(args)
    lab = load_lab(Path(args.topo))
    {"deploy": lambda: deploy(lab, args.reconfigure),
     "destroy": lambda: destroy(lab, args.cleanup),
     "inspect": lambda: inspect(lab)}[args.cmd]()


if __name__ == "__main__":
    main()
