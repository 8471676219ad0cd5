"""Filter of the common role: what `ip` must do so a node's point-to-point interfaces carry
exactly the IPv4 addresses of the inventory and are up.

Input is the output of `ip -j addr show` inside the node; the result is a batch for
`ip -batch -` (empty when nothing has to change), so the whole reconciliation is one
command on the node.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def address_plan(interfaces: list | None, ip_json: list, node: str | None = None) -> dict:
    """Return {missing_interfaces: [...], batch: "ip commands\\n...", changes: [...]}.

    With `node`, a missing interface is an error naming the node and the interfaces.
    """
    present = {link.get("ifname"): link for link in ip_json or []}
    missing: list[str] = []
    commands: list[str] = []
    for iface in interfaces or []:
        name = iface.get("name")
        if name not in present:
            missing.append(name)
            continue
        link = present[name]
        have = {
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        }
        want: set[str] = set()
        if iface.get("ipv4"):
            try:
                want.add(str(ipaddress.ip_interface(iface["ipv4"])))
            except ValueError as exc:
                raise AnsibleFilterError(f"interface {name}: bad ipv4 {iface['ipv4']!r}") from exc
        for cidr in sorted(have - want):
            commands.append(f"addr del {cidr} dev {name}")
        for cidr in sorted(want - have):
            commands.append(f"addr add {cidr} dev {name}")
        if "UP" not in link.get("flags", []):
            commands.append(f"link set dev {name} up")
    if missing and node:
        raise AnsibleFilterError(
            f"node {node} has no interface {', '.join(missing)} (is the lab up? run "
            f"`qkdtwin up`)")
    return {
        "missing_interfaces": missing,
        "changes": commands,
        "batch": "".join(c + "\n" for c in commands),
    }


class FilterModule:
    def filters(self) -> dict:
        return {"qkdtwin_address_plan": address_plan}
