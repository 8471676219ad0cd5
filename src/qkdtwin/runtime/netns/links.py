"""Point-to-point links of the netns runtime: a veth pair made directly inside the two
namespaces with the topology's interface names (addresses are left to Ansible's `common`)."""

from __future__ import annotations

from qkdtwin.runtime.base import Log, UpResult
from qkdtwin.runtime.netns.system import ns_links, run
from qkdtwin.topology import Lab, Link


def _paired(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return False
    if a.get("linkinfo", {}).get("info_kind") != "veth" or \
            b.get("linkinfo", {}).get("info_kind") != "veth":
        return False
    return a.get("link_index") == b.get("ifindex") and b.get("link_index") == a.get("ifindex")


def veth_argv(link: Link, na: str, nb: str) -> list[str]:
    argv = ["ip", "link", "add", "name", link.a.interface, "netns", na]
    if link.mtu:
        argv += ["mtu", str(link.mtu)]
    argv += ["type", "veth", "peer", "name", link.b.interface, "netns", nb]
    if link.mtu:
        argv += ["mtu", str(link.mtu)]
    return argv


def ensure_link(lab: Lab, link: Link, log: Log, result: UpResult) -> None:
    na, nb = lab.namespace(link.a.node), lab.namespace(link.b.node)
    la = ns_links(na).get(link.a.interface)
    lb = ns_links(nb).get(link.b.interface)
    if not _paired(la, lb):
        for ns, ifname, info in ((na, link.a.interface, la), (nb, link.b.interface, lb)):
            if info is not None:
                run(["ip", "-n", ns, "link", "del", ifname], check=False)
        run(veth_argv(link, na, nb))
        log(f"link {link.id}: veth {link.a.node}:{link.a.interface} <-> "
            f"{link.b.node}:{link.b.interface}")
        result.changes += 1
        la = ns_links(na).get(link.a.interface)
        lb = ns_links(nb).get(link.b.interface)
    for ns, ifname, info in ((na, link.a.interface, la), (nb, link.b.interface, lb)):
        if "UP" not in (info or {}).get("flags", []):
            run(["ip", "-n", ns, "link", "set", ifname, "up"])
