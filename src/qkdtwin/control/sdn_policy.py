"""Who may change the SDN controller's topology (ETSI GS QKD 015 subset, control/sdn.py).

The caller is the verified client certificate: CN = identity, OU = kind (role ``pki``:
``node`` for the lab's nodes, ``sae`` for applications, ``operator`` for the host). Reads are
open to every lab certificate; writes are not:

* a **node** certificate (OU ``node``) whose CN is a node of the inventory registers, updates
  and removes its own node and the PHYS links it ends, nothing else: not a link between two
  other nodes, not a VIRT link;
* the **writers** (config ``writers``, default: the node running admission control) may in
  addition write VIRT links at any node (admission registers the VIRT link of a relayed
  session at its source KM), never a PHYS link;
* the **operator** (OU ``operator``, CN in ``writers``, default ``host``) may write anything;
* every other certificate, an application's (OU ``sae``) included, writes nothing.

Each refusal is a :class:`Forbidden` with the reason, answered 403 with a JSON ``message``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NODE_OU = "node"
OPERATOR_OU = "operator"


class Forbidden(Exception):
    """A write the caller may not make (HTTP 403, the message says why)."""


@dataclass(frozen=True)
class Caller:
    cn: str
    ou: str | None
    kind: str  # "node", "writer" (a node with VIRT rights) or "operator"


def link_ends(link: dict[str, Any]) -> set[str]:
    """The node ids a link joins (local and remote)."""
    return {str((link.get(end) or {}).get("qkdn_id"))
            for end in ("qkdl_local", "qkdl_remote")}


class WritePolicy:
    def __init__(self, nodes: Iterable[str], writers: Iterable[str]) -> None:
        self.nodes = set(nodes)
        self.writers = set(writers)

    def caller(self, cn: str | None, ou: str | None) -> Caller:
        """The caller's write role, or Forbidden when it may write nothing."""
        if not cn:
            raise Forbidden("no verified client certificate")
        if ou == OPERATOR_OU and cn in self.writers:
            return Caller(cn, ou, "operator")
        if ou == NODE_OU and cn in self.nodes:
            return Caller(cn, ou, "writer" if cn in self.writers else "node")
        if ou == NODE_OU:
            raise Forbidden(f"{cn} is not a node of this lab's inventory: it may not change "
                            f"the topology")
        if ou == "sae":
            raise Forbidden(f"{cn} holds an application certificate (OU sae): applications "
                            f"may not change the topology")
        raise Forbidden(f"{cn} (OU {ou}) may not change the topology: only node "
                        f"certificates of the inventory may")

    def node(self, who: Caller, qkdn_id: str, verb: str) -> None:
        """Register (``verb`` = register) or remove a node."""
        if who.kind != "operator" and who.cn != qkdn_id:
            raise Forbidden(f"{who.cn} may not {verb} node {qkdn_id}: a node registers only "
                            f"itself")

    def link(self, who: Caller, qkdn_id: str, new: dict[str, Any] | None,
             old: dict[str, Any] | None) -> None:
        """Write link ``new`` (None: delete) over ``old`` (None: no such link yet) through
        the URL of node ``qkdn_id``."""
        if who.kind == "operator":
            return
        lid = (new or old or {}).get("qkdl_id")
        types = {lk.get("qkdl_type", "PHYS") for lk in (new, old) if lk is not None}
        if who.kind == "writer" and types == {"VIRT"}:
            return
        if who.cn != qkdn_id:
            raise Forbidden(f"{who.cn} may not write links of {qkdn_id}")
        if "VIRT" in types:
            raise Forbidden(f"link {lid}: VIRT links are written by admission control only")
        for lk in (new, old):
            if lk is not None and who.cn not in link_ends(lk):
                raise Forbidden(f"{who.cn} may not write link {lid}: it does not end at "
                                f"{who.cn}")
