"""`qkdtwin sae`: an application (SAE) asking its Key Manager for keys.

    qkdtwin sae star6 --sae sae-2 status --slave sae-3
    qkdtwin sae star6 --sae sae-2 get-key --slave sae-3 --number 2 --size 256     # ETSI 014
    qkdtwin sae star6 --sae sae-3 get-key-by-id --master sae-2 --key-id ID
    qkdtwin sae star6 --sae sae-2 open --destination sae-3                        # ETSI 004
    qkdtwin sae star6 --sae sae-3 open --source sae-2 --stream UUID
    qkdtwin sae star6 --sae sae-2 get-key --stream UUID [--index N]
    qkdtwin sae star6 --sae sae-2 close --stream UUID
    qkdtwin sae - --km-url https://127.0.0.1:8443 --cert C --key K --ca CA status --slave sae-3

With a LAB the KM (the one the SAE attaches to in the lab's users file), the client
certificate (``labs/clab-<lab>/pki/sae/<sae>.{crt,key}``) and the CA come from the lab's
files. ``--km-url``, ``--cert``/``--key`` and ``--ca`` override them; with all four no lab
is needed: give ``-`` as LAB (inside a container without the lab directory). Prints the KM's
JSON answer with ``http`` and ``seconds`` added; exits 0 on success, 1 when the KM refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.sae.client import KmResponse, SaeClient


def client_from_args(args: argparse.Namespace) -> SaeClient:
    """Build the client from a LAB and/or the explicit overrides."""
    url, cert, key, ca = args.km_url, args.cert, args.key, args.ca
    if (cert is None) != (key is None):
        raise UserError("give --cert and --key together")
    if args.lab in (None, "-"):
        missing = [o for o, v in (("--km-url", url), ("--cert", cert), ("--ca", ca)) if not v]
        if missing:
            raise UserError(f"without a LAB, give {', '.join(missing)} (or name the lab)")
    else:
        lab = DeployedLab.load(args.lab)
        if not args.sae:
            raise UserError("name the application with --sae (e.g. --sae sae-2)")
        if url is None:
            url = lab.km_url(lab.sae_km(args.sae))
        if cert is None:
            cert, key = (str(p) for p in lab.sae_identity(args.sae))
        if ca is None:
            ca = str(lab.ca)
    return SaeClient(url, cert, key, ca, timeout=args.timeout, sae_id=args.sae)


def _qos(args: argparse.Namespace) -> dict[str, Any]:
    qos: dict[str, Any] = {}
    for name, field in (("chunk", "key_chunk_size"), ("priority", "priority"),
                        ("qos_timeout", "timeout"), ("max_bps", "max_bps"),
                        ("min_bps", "min_bps"), ("ttl", "ttl")):
        v = getattr(args, name, None)
        if v is not None:
            qos[field] = v
    return qos


def run(args: argparse.Namespace) -> KmResponse:
    c = client_from_args(args)
    with c:
        if args.action == "status":
            return c.status(args.slave)
        if args.action == "get-key":
            if args.stream:
                if args.wait:
                    return c.wait_key(_uuid(args.stream), args.index, timeout=args.wait)
                return c.get_key(_uuid(args.stream), args.index)
            return c.enc_keys(args.slave, args.number, args.size, args.priority)
        if args.action == "get-key-by-id":
            return c.dec_keys(args.master, args.key_id)
        if args.action == "open":
            source = args.source or args.sae
            destination = args.destination or args.sae
            if not source or not destination or source == destination:
                raise UserError("open needs --destination (the peer of --sae) or --source "
                                "(when --sae is the destination)")
            stream = _uuid(args.stream) if args.stream else None
            return c.open_connect(source, destination, _qos(args), stream)
        if args.action == "close":
            return c.close(_uuid(args.stream))
    raise UserError(f"unknown action {args.action}")  # pragma: no cover (argparse)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UserError(f"{text!r} is not a key stream id (a UUID)") from None


def cmd_sae(args: argparse.Namespace) -> int:
    r = run(args)
    print(json.dumps(r.as_dict(), indent=None if args.compact else 2))
    if not r.ok:
        print(f"qkdtwin sae: the KM refused ({r.http}"
              + (f", status {r.status}" if r.status is not None else "")
              + f"): {r.message}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sae", help="an application asking its KM for keys (ETSI 014 and 004)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lab", metavar="LAB",
                   help="deployed lab (name or labs/<lab>.clab.yml), or '-' for none "
                        "(then give --km-url, --cert, --key and --ca)")
    p.add_argument("--sae", metavar="SAE_ID", help="the application calling (e.g. sae-2)")
    p.add_argument("--km-url", metavar="URL",
                   help="the KM to call (default: the SAE's KM, https://<mgmt addr>:8443)")
    p.add_argument("--cert", metavar="PEM", help="client certificate (default: the lab's)")
    p.add_argument("--key", metavar="PEM", help="client key (with --cert)")
    p.add_argument("--ca", metavar="PEM", help="CA of the KM's certificate (default: lab CA)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, s (default 30)")
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_sae)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("status", help="ETSI 014 status of the key supply towards a slave SAE")
    s.add_argument("--slave", required=True, metavar="SAE_ID")

    g = sub.add_parser("get-key", help="ETSI 014 enc_keys (--slave) or ETSI 004 GET_KEY "
                                       "(--stream)")
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--slave", metavar="SAE_ID", help="ETSI 014: new keys for this slave")
    which.add_argument("--stream", metavar="UUID", help="ETSI 004: next key of this stream")
    g.add_argument("--number", type=_positive, default=1, help="014: how many keys")
    g.add_argument("--size", type=_positive, help="014: key size in bits")
    g.add_argument("--priority", type=_positive, help="014: priority 0-9 (qkdtwin extension)")
    g.add_argument("--index", type=_positive, help="004: the key at this stream index")
    g.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="004: retry up to S seconds while the KM has no key yet / the peer "
                        "is not connected")

    k = sub.add_parser("get-key-by-id", help="ETSI 014 dec_keys: keys a master SAE received")
    k.add_argument("--master", required=True, metavar="SAE_ID")
    k.add_argument("--key-id", required=True, action="append", metavar="KEY_ID",
                   help="repeat for several keys")

    o = sub.add_parser("open", help="ETSI 004 OPEN_CONNECT")
    o.add_argument("--source", metavar="SAE_ID", help="default: --sae")
    o.add_argument("--destination", metavar="SAE_ID", help="default: --sae")
    o.add_argument("--stream", metavar="UUID",
                   help="key_stream_id (the second application gives the first one's)")
    o.add_argument("--chunk", type=_positive, metavar="BYTES", help="QoS key_chunk_size")
    o.add_argument("--priority", type=_positive, help="QoS priority 0-9")
    o.add_argument("--qos-timeout", type=_positive, metavar="MS", help="QoS timeout (ms)")
    o.add_argument("--max-bps", type=_positive, help="QoS max_bps")
    o.add_argument("--min-bps", type=_positive, help="QoS min_bps")
    o.add_argument("--ttl", type=_positive, metavar="S", help="QoS ttl (s)")

    c = sub.add_parser("close", help="ETSI 004 CLOSE")
    c.add_argument("--stream", required=True, metavar="UUID")
