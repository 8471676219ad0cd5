"""What a host-side client needs to know about a deployed lab, read from the files that
`qkdtwin deploy` leaves in ``labs/clab-<lab>/``: the generated inventory (KM addresses, which
KM each SAE attaches to, the broker) and the host-side PKI (CA, SAE and host certificates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qkdtwin.errors import UserError

KM_PORT = 8443  # the KM's HTTPS port (docs/architecture.md)


@dataclass
class DeployedLab:
    name: str
    lab_dir: Path
    vars: dict[str, Any]

    @classmethod
    def load(cls, ref: str | Path) -> DeployedLab:
        """A lab by name or topology path; refused when it has not been deployed."""
        from qkdtwin.topology import load_lab

        lab = load_lab(ref)
        inv = lab.lab_dir / "ansible-inventory.yml"
        if not inv.is_file():
            raise UserError(f"lab {lab.name} is not deployed: {inv} does not exist "
                            f"(run `qkdtwin deploy {ref}`)")
        try:
            data = yaml.safe_load(inv.read_text()) or {}
            all_vars = data["all"]["vars"]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise UserError(f"cannot read the inventory {inv}: {exc}") from None
        return cls(lab.name, lab.lab_dir, all_vars)

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

    @property
    def runtime(self) -> str:
        return str(self.vars.get("qkdtwin_runtime", "netns"))

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

    def broker(self) -> dict[str, Any]:
        b = self.vars.get("qkdtwin_broker")
        if not isinstance(b, dict) or not b.get("host"):
            raise UserError(f"the inventory of lab {self.name} names no broker")
        return {"host": str(b["host"]), "port": int(b.get("port", 8883))}

    def broker_config(self) -> Any:
        """A :class:`qkdtwin.bus.BrokerConfig` with the host identity (CN=host)."""
        from qkdtwin.bus import BrokerConfig

        cert, key = self.host_identity()
        b = self.broker()
        return BrokerConfig(b["host"], b["port"], str(self.ca), str(cert), str(key))

    def namespace(self, node: str) -> str:
        return f"clab-{self.name}-{node}"
