"""Connecting to a deployed lab: what a host-side client needs to know about it, read from
the files that `qkdtwin deploy` leaves in ``labs/clab-<lab>/``: the generated inventory (KM
addresses, which KM each SAE attaches to, the broker, the runtime) and the host-side PKI (CA,
SAE and host certificates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from qkdtwin.bus import BrokerConfig
from qkdtwin.errors import UserError
from qkdtwin.runtime.base import Runtime
from qkdtwin.runtime.inventory import inventory_path
from qkdtwin.runtime.registry import DEFAULT_RUNTIME, get_runtime
from qkdtwin.topology import Lab, load_lab

KM_PORT = 8443  # the KM's HTTPS port (docs/architecture.md)


@dataclass
class DeployedLab:
    name: str
    lab_dir: Path
    vars: dict[str, Any]  # the inventory's all.vars
    topology: Lab | None = None  # the lab file it was deployed from

    @classmethod
    def load(cls, ref: str | Path) -> DeployedLab:
        """A lab by name or topology path; refused when it has not been deployed."""
        lab = load_lab(ref)
        inv = inventory_path(lab)
        if not inv.is_file():
            raise UserError(f"lab {lab.name} is not deployed: {inv} does not exist "
                            f"(run `qkdtwin deploy {ref}`)")
        try:
            data = yaml.safe_load(inv.read_text()) or {}
            all_vars = data["all"]["vars"]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise UserError(f"cannot read the inventory {inv}: {exc}") from None
        return cls(lab.name, lab.lab_dir, all_vars, lab)

    # -- PKI --

    @property
    def pki(self) -> Path:
        return self.lab_dir / "pki"

    @property
    def ca(self) -> Path:
        return self._need(self.pki / "ca.crt", "the lab CA certificate")

    def host_identity(self) -> tuple[Path, Path]:
        """The operator's client certificate (CN=host): reads everything on the bus."""
        return (self._need(self.pki / "host.crt", "the host certificate"),
                self._need(self.pki / "host.key", "the host key"))

    def sae_identity(self, sae_id: str) -> tuple[Path, Path]:
        self.sae_km(sae_id)  # a clear error for an SAE the lab does not know
        return (self._need(self.pki / "sae" / f"{sae_id}.crt", f"the certificate of {sae_id}"),
                self._need(self.pki / "sae" / f"{sae_id}.key", f"the key of {sae_id}"))

    def _need(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise UserError(f"{what} is missing: {path} (has `qkdtwin deploy` run its pki role?)")
        return path

    # -- topology facts --

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return dict(self.vars.get("qkdtwin_nodes") or {})

    @property
    def kms(self) -> list[str]:
        return sorted(n for n, info in self.nodes.items() if "km" in (info.get("roles") or []))

    @property
    def qkd_links(self) -> list[dict[str, Any]]:
        return list(self.vars.get("qkdtwin_qkd_links") or [])

    # -- runtime: reaching a node --

    @property
    def runtime_name(self) -> str:
        return str(self.vars.get("qkdtwin_runtime", DEFAULT_RUNTIME))

    @property
    def runtime(self) -> Runtime:
        """The backend the lab was deployed with (the inventory records it)."""
        return get_runtime(self.runtime_name)

    @property
    def lab(self) -> Lab:
        if self.topology is None:
            raise UserError(f"lab {self.name}: loaded without its topology")
        return self.topology

    @property
    def node_python(self) -> str:
        """The interpreter of qkdtwin's services inside the nodes."""
        return str(self.vars.get("qkdtwin_python") or self.runtime.node_python())

    def node_name(self, node: str) -> str:
        """The node's name on the host (namespace or container)."""
        return self.runtime.node_name(self.lab, node)

    def node_argv(self, node: str, argv: list[str]) -> list[str]:
        """The host command line that runs ``argv`` inside ``node``."""
        return self.runtime.exec_argv(self.lab, node, argv)

    def saes(self) -> dict[str, dict[str, str]]:
        """SAE ID -> {km, user, status} from the lab's users file."""
        out: dict[str, dict[str, str]] = {}
        for user in self.vars.get("qkdtwin_users") or []:
            for app in user.get("applications") or []:
                out[app["sae_id"]] = {"km": app["km"], "user": user.get("name", ""),
                                      "status": user.get("status", "active")}
        return out

    def sae_km(self, sae_id: str) -> str:
        saes = self.saes()
        if sae_id not in saes:
            known = ", ".join(sorted(saes)) or "none"
            raise UserError(f"lab {self.name} has no application {sae_id} (known: {known})")
        return saes[sae_id]["km"]

    def mgmt_address(self, node: str) -> str:
        info = self.nodes.get(node)
        if not info or not info.get("mgmt_ipv4"):
            raise UserError(f"lab {self.name} has no node {node} with a mgmt address")
        return str(info["mgmt_ipv4"])

    def km_url(self, km: str) -> str:
        return f"https://{self.mgmt_address(km)}:{KM_PORT}"

    def km_health(self, kms: list[str] | None = None,
                  timeout: float = 5.0) -> dict[str, dict[str, Any] | None]:
        """Each KM's /healthz (every KM by default) with the operator certificate: sessions
        by state, link pools; None for a KM that did not answer."""
        out: dict[str, dict[str, Any] | None] = {}
        with requests.Session() as s:
            s.trust_env = False  # lab addresses, never through a proxy
            s.verify = str(self.ca)
            s.cert = tuple(str(p) for p in self.host_identity())
            for km in self.kms if kms is None else kms:
                try:
                    body = s.get(f"{self.km_url(km)}/healthz", timeout=timeout).json()
                except (requests.RequestException, ValueError):
                    body = None
                out[km] = body if isinstance(body, dict) else None
        return out

    def broker(self) -> dict[str, Any]:
        b = self.vars.get("qkdtwin_broker")
        if not isinstance(b, dict) or not b.get("host"):
            raise UserError(f"the inventory of lab {self.name} names no broker")
        return {"host": str(b["host"]), "port": int(b.get("port", 8883))}

    def broker_config(self) -> BrokerConfig:
        """Broker address with the host identity (CN=host): reads and writes everything."""
        cert, key = self.host_identity()
        b = self.broker()
        return BrokerConfig(b["host"], b["port"], str(self.ca), str(cert), str(key))
