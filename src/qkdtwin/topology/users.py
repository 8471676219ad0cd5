"""The users file (`labs/<lab>.users.yml`): users, their SLA and their applications (SAEs)."""

from __future__ import annotations

import re
from typing import Any

from qkdtwin.topology.model import ROLES, Application, Node, User
from qkdtwin.topology.values import check_count, typename

USER_STATUSES = ("active", "disabled")
SLA_FIELDS = ("max_priority", "max_key_rate", "max_key_size", "max_sessions",
              "allowed_destinations")
_SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Identities an application certificate must never carry: the broker maps a certificate to
# its rights by CN (and OU), the SDN controller and the KMs know nodes by CN.
RESERVED_IDS = {"host": "the operator's identity (certificate CN host)",
                **{r: f"the name of the {r} role" for r in ROLES}}


def build_users(data: dict, nodes: dict[str, Node]) -> tuple[list[User], list[str]]:
    """The valid users of a users file and the problems of all of them."""
    problems: list[str] = []
    extra = set(data) - {"users"}
    if extra:
        problems.append(f"unknown top-level key(s): {', '.join(sorted(extra))} "
                        f"(only 'users')")
    raw_users = data.get("users")
    if not isinstance(raw_users, list):
        return [], problems + [f"users: must be a list, got {typename(raw_users)}"]
    users: list[User] = []
    names: set[str] = set()
    sae_owner: dict[str, str] = {}  # SAE ID -> the user it belongs to
    for i, ru in enumerate(raw_users):
        if not isinstance(ru, dict):
            problems.append(f"users[{i}]: must be a mapping, got {typename(ru)}")
            continue
        user, up = _build_user(i, ru, nodes, names, sae_owner)
        problems += up
        if user is not None:
            users.append(user)
    # allowed_destinations must name SAEs that exist (or "*").
    for u in users:
        for d in u.sla.get("allowed_destinations", []):
            if d != "*" and d not in sae_owner:
                problems.append(f"user {u.name}: sla.allowed_destinations: {d!r} is not an "
                                f"SAE ID of this lab")
    return users, problems


def _build_user(i: int, ru: dict, nodes: dict[str, Node], names: set[str],
                sae_owner: dict[str, str]) -> tuple[User | None, list[str]]:
    uname = ru.get("name")
    where = f"user {uname}" if isinstance(uname, str) else f"users[{i}]"
    up: list[str] = []
    unknown = set(ru) - {"name", "status", "sla", "applications"}
    if unknown:
        up.append(f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    if not isinstance(uname, str) or not _USER_NAME.match(uname):
        up.append(f"{where}: name: must be a name of letters, digits, '._-'")
    elif uname in names:
        up.append(f"{where}: name: duplicate user")
    names.add(str(uname))
    status = ru.get("status")
    if status not in USER_STATUSES:
        up.append(f"{where}: status: {status!r} must be one of {', '.join(USER_STATUSES)}")
    sla = ru.get("sla")
    if not isinstance(sla, dict):
        up.append(f"{where}: sla: must be a mapping with {', '.join(SLA_FIELDS)}")
        sla = {}
    else:
        up = _sla_problems(where, sla, up)
    apps, ap = _applications(where, str(uname), ru.get("applications", []), nodes, sae_owner)
    up += ap
    if up:
        return None, up
    return User(name=uname, status=status, sla=dict(sla), applications=tuple(apps)), []


def _sla_problems(where: str, sla: dict, up: list[str]) -> list[str]:
    """`up` (the user's problems so far) followed by those of its SLA mapping."""
    up = list(up)
    for key in sorted(set(SLA_FIELDS) - set(sla)):
        up.append(f"{where}: sla.{key}: missing")
    for key in sorted(set(map(str, sla)) - set(SLA_FIELDS)):
        up.append(f"{where}: sla.{key}: unknown field (known: {', '.join(SLA_FIELDS)})")
    if "max_priority" in sla:
        up += check_count(where, "sla.max_priority", sla["max_priority"], 0, 9)
    if "max_key_rate" in sla:
        up += check_count(where, "sla.max_key_rate", sla["max_key_rate"], 1, None)
    if "max_key_size" in sla:
        up += check_count(where, "sla.max_key_size", sla["max_key_size"], 8, None)
        # Only when nothing else is wrong with this user so far (the value is an integer).
        if not up and sla["max_key_size"] % 8:
            up.append(f"{where}: sla.max_key_size: {sla['max_key_size']} is not a "
                      f"whole number of bytes (multiple of 8 bits)")
    if "max_sessions" in sla:
        up += check_count(where, "sla.max_sessions", sla["max_sessions"], 0, None)
    dests = sla.get("allowed_destinations", [])
    if not isinstance(dests, list) or not all(isinstance(d, str) for d in dests):
        up.append(f"{where}: sla.allowed_destinations: must be a list of SAE IDs "
                  f"or [\"*\"]")
    return up


def _applications(where: str, uname: str, raw_apps: Any, nodes: dict[str, Node],
                  sae_owner: dict[str, str]) -> tuple[list[Application], list[str]]:
    """A user's applications and their problems; records each SAE ID in `sae_owner`."""
    apps: list[Application] = []
    up: list[str] = []
    if not isinstance(raw_apps, list):
        return [], [f"{where}: applications: must be a list of {{sae_id, km}}"]
    for j, ra in enumerate(raw_apps):
        aw = f"{where}: applications[{j}]"
        if not isinstance(ra, dict):
            up.append(f"{aw}: must be a mapping {{sae_id, km}}")
            continue
        unknown = set(ra) - {"sae_id", "km"}
        if unknown:
            up.append(f"{aw}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        sae, km = ra.get("sae_id"), ra.get("km")
        if not isinstance(sae, str) or not _SAE_ID.match(sae):
            up.append(f"{aw}: sae_id: {sae!r} is not a valid SAE ID "
                      f"(letters, digits, '._-')")
        else:
            aw = f"{where}: application {sae}"
            clash = identity_clash(sae, nodes)
            if clash:
                up.append(f"{aw}: sae_id: {clash}")
            if sae in sae_owner:
                up.append(f"{aw}: sae_id: already used by user {sae_owner[sae]}")
            sae_owner[sae] = uname
        if km not in nodes:
            up.append(f"{aw}: km: {km!r} is not a node of the lab")
        elif "km" not in nodes[km].roles:
            up.append(f"{aw}: km: node {km} is not a key manager (role km)")
        if isinstance(sae, str) and isinstance(km, str):
            apps.append(Application(sae_id=sae, km=km))
    return apps, up


def identity_clash(sae: str, nodes: dict[str, Node] | list[str]) -> str | None:
    """Why SAE ID ``sae`` may not be used (None: it may): it equals another identity of the
    lab (case-insensitively, as host names compare), whose rights its certificate would
    claim."""
    low = sae.lower()
    node = next((n for n in nodes if n.lower() == low), None)
    if node is not None:
        return (f"{sae!r} clashes with node {node} of the lab (an application certificate "
                f"must not carry a node's name); rename the application")
    if low in RESERVED_IDS:
        return f"{sae!r} clashes with {RESERVED_IDS[low]}; rename the application"
    return None
