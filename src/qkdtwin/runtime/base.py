"""The interface every lab runtime (backend) implements, and what `up` returns.

A runtime turns a lab file into running nodes and links on some hosts and removes them
again; it also says how the host reaches a node: the command line that runs a program inside
it, the node's Python, the node's name on the host and the Ansible connection vars. Callers
never name a backend: they take one from :mod:`qkdtwin.runtime.registry` by the name the user
gave (``--runtime``) or the one a deployed lab's inventory records.

To add a backend: subclass :class:`Runtime`, implement the abstract methods, and register the
class (``qkdtwin.runtime.registry.register``). docs/runtimes.md walks through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qkdtwin.runtime.inventory import write_inventory
from qkdtwin.topology import Lab

Log = Callable[[str], None]


@dataclass
class UpResult:
    """What `up` did. Each backend fills the counters that mean something for it."""

    warnings: list[str] = field(default_factory=list)
    changes: int = 0  # netns: system changes made (0: the lab was already as declared)
    deployed: bool = False  # clab: False when every node was already running
    impairments: int = 0  # clab: netem set commands sent
    inventory: Path | None = None  # the Ansible inventory written after the lab came up


class Runtime(ABC):
    """One way of running a lab. Subclasses set ``name`` and ``description`` (argparse help)
    and implement the abstract methods; the rest has defaults shared by every backend."""

    name: ClassVar[str]
    description: ClassVar[str]  # "this host", "containerlab + Docker"
    exec_tool: ClassVar[str]  # the host command behind exec_argv(), checked before use

    # -- lifecycle --

    def up(self, lab: Lab, log: Log = print) -> UpResult:
        """Create (or repair) the lab, then write its inventory, once, for this runtime."""
        result = self.create(lab, log)
        result.inventory = write_inventory(lab, self)
        log(f"inventory: {result.inventory}")
        return result

    @abstractmethod
    def create(self, lab: Lab, log: Log) -> UpResult:
        """Bring the lab's nodes and links up (idempotent); no inventory."""

    @abstractmethod
    def down(self, lab: Lab, log: Log = print) -> None:
        """Remove the lab's nodes and links."""

    @abstractmethod
    def status(self, lab: Lab) -> dict[str, Any]:
        """Live state as a JSON-ready dict: lab, runtime, topology, lab_dir, state
        ("up", "partial", "down"), nodes, links, warnings."""

    @abstractmethod
    def format_status(self, st: dict[str, Any]) -> str:
        """`status()` as the table `qkdtwin status` prints."""

    @abstractmethod
    def up_summary(self, lab: Lab, result: UpResult) -> str:
        """The last line of `qkdtwin up`."""

    # -- reaching a node --

    def node_name(self, lab: Lab, node: str) -> str:
        """The node's name on the host (namespace or container): ``clab-<lab>-<node>``."""
        return lab.namespace(node)

    def owns(self, lab: Lab, host_name: str) -> bool:
        """Whether a namespace/container name on the host belongs to this lab."""
        return host_name.startswith(lab.namespace(""))

    @abstractmethod
    def exec_argv(self, lab: Lab, node: str, argv: Sequence[str]) -> list[str]:
        """The host command line that runs ``argv`` inside ``node``."""

    @abstractmethod
    def node_python(self) -> str:
        """The interpreter that runs qkdtwin's services inside a node."""

    # -- Ansible inventory --

    @abstractmethod
    def connection_vars(self, lab: Lab, node: str, python: str) -> dict[str, Any]:
        """The host vars that tell Ansible how to reach ``node``."""

    @abstractmethod
    def data_dir(self, lab: Lab, node: str) -> str:
        """Where ``node`` keeps its state (``qkdtwin_data_dir``)."""
