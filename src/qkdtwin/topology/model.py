"""The lab model: what a validated lab is (nodes, links, users) and the error for a bad one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError

ROLES = ("km", "sdn", "access", "admission", "routing", "monitor", "broker", "app")
# Roles that must exist exactly once in a lab (the control plane and the broker).
CONTROL_ROLES = ("sdn", "access", "admission", "routing", "monitor", "broker")
ROLE_LABEL = "qkdtwin.role"
MGMT_INTERFACE = "eth0"
BROKER_PORT = 8883


class LabInvalid(UserError):
    """A lab file (or its users file) breaks one or more rules; `problems` lists them."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{Path(path).name} is invalid, {len(problems)} problem(s) "
                         f"(run `qkdtwin validate`):\n{lines}")


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str
    ipv4: str | None = None  # CIDR, e.g. 10.10.1.1/30

    @property
    def address(self) -> str | None:
        """The bare address of `ipv4`."""
        return self.ipv4.split("/")[0] if self.ipv4 else None


@dataclass(frozen=True)
class Link:
    id: str  # "<a>-<b>" from the endpoints in file order
    a: Endpoint
    b: Endpoint
    qkd: dict[str, Any] | None = None  # None: classical-only link
    impairment: dict[str, float] = field(default_factory=dict)
    mtu: int | None = None
    ipv4_derived: bool = False

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)

    def end(self, node: str) -> Endpoint:
        return self.a if self.a.node == node else self.b

    def peer(self, node: str) -> Endpoint:
        return self.b if self.a.node == node else self.a

    @property
    def qkd_model(self) -> str | None:
        """What emulates the QKD link (`vars.qkd.model`, default bb84); None: classical."""
        return None if self.qkd is None else str(self.qkd.get("model", "bb84"))

    @property
    def qkd_label(self) -> str | None:
        """The model as tables show it: `bb84/ldpc` when a bb84 (or statistical) link
        reconciles with LDPC."""
        model = self.qkd_model
        method = (self.qkd or {}).get("reconciliation", "cascade")
        if model in ("bb84", "statistical") and method != "cascade":
            return f"{model}/{method}"
        return model


@dataclass(frozen=True)
class Node:
    name: str
    roles: tuple[str, ...]
    mgmt_ipv4: str  # bare address
    kind: str = "linux"
    image: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Application:
    sae_id: str
    km: str


@dataclass(frozen=True)
class User:
    name: str
    status: str
    sla: dict[str, Any]
    applications: tuple[Application, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sla": dict(self.sla),
            "applications": [{"sae_id": a.sae_id, "km": a.km} for a in self.applications],
        }


@dataclass
class Lab:
    name: str
    path: Path  # the topology file (absolute)
    mgmt_network: str
    mgmt_subnet: ipaddress.IPv4Network
    nodes: dict[str, Node]
    links: list[Link]
    users: list[User]
    users_path: Path | None  # None when the lab has no users file

    @property
    def lab_dir(self) -> Path:
        """Artefacts directory, like containerlab's: `clab-<lab>/` beside the topology."""
        return self.path.parent / f"clab-{self.name}"

    @property
    def mgmt_gateway(self) -> str:
        """The host's address on the lab bridge: first address of the mgmt subnet."""
        return str(next(self.mgmt_subnet.hosts()))

    def namespace(self, node: str) -> str:
        return f"clab-{self.name}-{node}"

    def nodes_with_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes.values() if role in n.roles]

    @property
    def elements(self) -> dict[str, str]:
        """Control role -> the node that runs it."""
        out: dict[str, str] = {}
        for role in CONTROL_ROLES:
            nodes = self.nodes_with_role(role)
            if nodes:
                out[role] = nodes[0].name
        return out

    @property
    def broker(self) -> Node:
        return self.nodes_with_role("broker")[0]

    @property
    def qkd_links(self) -> list[Link]:
        return [lk for lk in self.links if lk.qkd is not None]

    def links_of(self, node: str) -> list[Link]:
        return [lk for lk in self.links if node in (lk.a.node, lk.b.node)]
