"""`qkdtwin users list|add|disable|enable LAB ...`: manage the user-profile DB of a running
lab through Access Control (MQTT request/reply on ``qkd/v1/access/admin``), as the operator
(``labs/clab-<lab>/pki/host.{crt,key}``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import BrokerConfig, Bus, RequestTimeout
from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.topology.users import identity_clash


def lab_connection(lab_ref: str) -> BrokerConfig:
    """Broker address and host client certificate of a deployed lab."""
    return DeployedLab.load(lab_ref).broker_config()


def ask_access(broker: BrokerConfig, body: m.Message, timeout: float = 5.0
               ) -> dict[str, Any]:
    b = Bus(broker, "host", workers=1)
    b.start(wait=0)
    try:
        if not b.wait_connected(timeout):
            raise UserError(f"broker {broker.host}:{broker.port} not reachable")
        try:
            answer = b.request(bus.ACCESS_ADMIN, body.to_payload(), timeout=timeout)
        except RequestTimeout:
            raise UserError("access control did not answer (is the element running?)") from None
    finally:
        b.stop()
    if not answer.get("ok"):
        raise UserError(answer.get("reason") or "refused")
    return answer


def _sae(spec: str) -> dict[str, str]:
    sae, sep, km = spec.partition("@")
    if not sep or not sae or not km:
        raise argparse.ArgumentTypeError(f"{spec!r}: use SAE_ID@KM, e.g. sae-7@km3")
    return {"sae_id": sae, "km": km}


def format_user(u: dict[str, Any]) -> str:
    sla = u["sla"]
    apps = ", ".join(f"{a['sae_id']}@{a['km']}" for a in u["applications"]) or "-"
    dests = ",".join(sla.get("allowed_destinations") or []) or "none"
    return (f"{u['name']:<12} {u['status']:<9} prio<={sla['max_priority']} "
            f"rate<={sla['max_key_rate']}b/s size<={sla['max_key_size']}b "
            f"sessions<={sla['max_sessions']} dest={dests}  apps: {apps}")


def cmd_list(args: argparse.Namespace) -> int:
    users = ask_access(lab_connection(args.lab), m.UserList())["users"]
    if args.json:
        print(json.dumps(users, indent=2))
    else:
        for u in users:
            print(format_user(u))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    nodes = list(DeployedLab.load(args.lab).lab.nodes)
    for app in args.sae or []:
        clash = identity_clash(app["sae_id"], nodes)
        if clash:
            raise UserError(f"application {app['sae_id']}: sae_id: {clash}")
    rec = {"name": args.name, "status": "disabled" if args.disabled else "active",
           "sla": {"max_priority": args.max_priority, "max_key_rate": args.max_key_rate,
                   "max_key_size": args.max_key_size, "max_sessions": args.max_sessions,
                   "allowed_destinations": args.allow or ["*"]},
           "applications": args.sae or []}
    u = ask_access(lab_connection(args.lab), m.UserAdd(user=rec))["user"]
    print(format_user(u))
    return 0


STATUS: dict[str, type[m.UserDisable] | type[m.UserEnable]] = {
    "user_disable": m.UserDisable, "user_enable": m.UserEnable}


def _status(args: argparse.Namespace, kind: str) -> int:
    u = ask_access(lab_connection(args.lab), STATUS[kind](name=args.name))["user"]
    print(format_user(u))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="list, add, disable or enable users of a running lab")
    s = p.add_subparsers(dest="users_command", metavar="ACTION")
    s.required = True
    pl = s.add_parser("list", help="list users, their applications and SLAs")
    pl.add_argument("lab", help="labs/<lab>.clab.yml or a lab name")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(func=cmd_list)
    pa = s.add_parser("add", help="add or replace a user")
    pa.add_argument("lab")
    pa.add_argument("name")
    pa.add_argument("--sae", type=_sae, action="append", metavar="SAE_ID@KM",
                    help="an application of the user (repeatable)")
    pa.add_argument("--max-priority", type=int, default=0)
    pa.add_argument("--max-key-rate", type=int, default=4096, help="bit/s per session")
    pa.add_argument("--max-key-size", type=int, default=256, help="bits")
    pa.add_argument("--max-sessions", type=int, default=1)
    pa.add_argument("--allow", action="append", metavar="SAE_ID",
                    help="allowed destination (repeatable; default: any)")
    pa.add_argument("--disabled", action="store_true")
    pa.set_defaults(func=cmd_add)
    for action, kind in (("disable", "user_disable"), ("enable", "user_enable")):
        pd = s.add_parser(action, help=f"{action} a user")
        pd.add_argument("lab")
        pd.add_argument("name")
        pd.set_defaults(func=lambda a, k=kind: _status(a, k))


__all__ = ["register", "lab_connection"]
