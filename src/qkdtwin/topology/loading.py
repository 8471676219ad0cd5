"""Reading a lab from disk: find the files, run the validation layers, assemble the `Lab`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from qkdtwin.errors import UserError
from qkdtwin.topology.links import build_links
from qkdtwin.topology.model import Lab, LabInvalid, Node, User
from qkdtwin.topology.nodes import build_nodes, mgmt_subnet, role_problems
from qkdtwin.topology.schema import schema_problems
from qkdtwin.topology.users import build_users
from qkdtwin.topology.values import typename


def resolve_lab_path(ref: str | Path) -> Path:
    """Accept a path to a `.clab.yml` file or a lab name (looked up in `./labs/`)."""
    p = Path(ref)
    candidates = [p]
    if p.suffix not in (".yml", ".yaml"):
        candidates += [Path("labs") / f"{ref}.clab.yml", Path("labs") / f"{ref}.clab.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise UserError(f"no such lab: {ref} (give a labs/<lab>.clab.yml path or a lab name)")


def users_path_for(topology: Path) -> Path:
    """`labs/x.clab.yml` -> `labs/x.users.yml`."""
    name = topology.name
    for suffix in (".clab.yml", ".clab.yaml", ".yml", ".yaml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return topology.with_name(f"{name}.users.yml")


def load_lab(ref: str | Path) -> Lab:
    """Load and validate a lab; raise `LabInvalid` listing every problem."""
    path = resolve_lab_path(ref)
    lab, problems = check_lab(path)
    if problems or lab is None:
        raise LabInvalid(path, problems)
    return lab


def check_lab(path: Path) -> tuple[Lab | None, list[str]]:
    """Validate a lab file; return (lab or None, problems). Never raises for bad content."""
    path = Path(path)
    data, problems = _read_yaml(path)
    if not problems:
        problems = schema_problems(data)
    if problems:
        # Conventions assume a schema-valid structure; report the lower layer first.
        return None, [f"{path.name}: {p}" for p in problems]
    lab, problems, nodes = _build(path, data)
    problems = [f"{path.name}: {p}" for p in problems]
    upath = users_path_for(path)
    users: list[User] = []
    if upath.exists():
        udata, uproblems = _read_yaml(upath)
        if not uproblems:
            users, uproblems = build_users(udata, nodes)
        problems += [f"{upath.name}: {p}" for p in uproblems]
    if lab is not None:
        lab.users = users
        lab.users_path = upath if upath.exists() else None
    return (lab if not problems else None), problems


def _read_yaml(path: Path) -> tuple[Any, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [f"cannot read: {exc.strerror}"]
    except UnicodeDecodeError:
        return None, ["not UTF-8 text"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, [f"YAML error{where}: {what}"]
    if not isinstance(data, dict):
        return None, [f"top level must be a mapping, got {typename(data)}"]
    return data, []


def _build(path: Path, data: dict) -> tuple[Lab | None, list[str], dict[str, Node]]:
    """Layer 3, the project's conventions: the Lab (None when there are problems), the
    problems, and the nodes as parsed (the users file is checked against them)."""
    name = data["name"]
    topo = data.get("topology") or {}
    mgmt = data.get("mgmt") or {}
    subnet, problems = mgmt_subnet(mgmt)
    if not topo.get("nodes"):
        problems.append("topology.nodes: a lab needs nodes")
    nodes, node_problems = build_nodes(topo, subnet)
    problems += node_problems
    problems += role_problems(nodes, node_problems)
    links, link_problems = build_links(topo.get("links") or [], nodes)
    problems += link_problems
    if problems or subnet is None:
        return None, problems, nodes
    return Lab(name=name, path=path.resolve(), mgmt_network=mgmt.get("network") or
               f"clab-{name}", mgmt_subnet=subnet, nodes=nodes, links=links, users=[],
               users_path=None), [], nodes
