"""`qkdtwin generate`: a lab file, its users file and a scenario from a shape or a network."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.topology import check_lab
from qkdtwin.topology.generate import MODELS, RECONCILIATION, SHAPES, Spec, generate, known_networks


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="write a lab (ring, grid, star, geometric, or a real network), "
                         "its users and a scenario",
        description="Write <name>.clab.yml, <name>.users.yml and <name>.scenario.yml. "
                    "Seeded: the same options give the same files.",
        epilog="examples:\n"
               "  qkdtwin generate ring --nodes 20 --out /tmp/labs\n"
               "  qkdtwin generate geometric --nodes 50 --area-km 150 --bb84-links 3 "
               "--pairs 100\n"
               "  qkdtwin generate secoqc --model bb84          # a real network's data\n"
               f"networks: {', '.join(known_networks()) or 'none'}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", help=f"one of {', '.join(SHAPES)}, or a network name")
    p.add_argument("--nodes", type=int, default=12, help="key managers (shapes only; 12)")
    p.add_argument("--seed", type=int, default=1, help="random seed (1)")
    p.add_argument("--name", help="lab name (default: <shape><nodes>, or the network's)")
    p.add_argument("--out", default="labs", help="directory for the three files (labs/)")
    p.add_argument("--octet", type=int, default=100,
                   help="mgmt subnet 172.31.<octet>.0/24 (100)")
    p.add_argument("--length-km", type=float, default=10.0,
                   help="ring, grid, star: every link's length (10)")
    p.add_argument("--area-km", type=float, default=100.0,
                   help="geometric: side of the square the nodes are drawn in (100)")
    p.add_argument("--degree", type=float, default=3.0,
                   help="geometric: mean neighbours per node aimed at (3)")
    p.add_argument("--model", choices=MODELS, default="analytic",
                   help="link model of the links (analytic)")
    p.add_argument("--bb84-links", type=int, default=0,
                   help="this many links, drawn with the seed, run bb84 instead (0)")
    p.add_argument("--reconciliation", choices=RECONCILIATION, default="cascade",
                   help="how the bb84 and statistical links reconcile (cascade)")
    p.add_argument("--source-rate", type=float, default=10.0e6,
                   help="QKD source rate in Hz (1e7)")
    p.add_argument("--control", choices=("combined", "separate"), default="combined",
                   help="control roles on one node, or one node each (combined)")
    p.add_argument("--pairs", type=int, default=10, help="application pairs (10)")
    p.add_argument("--max-hops", type=int, default=6, help="longest path of a pair (6)")
    p.add_argument("--no-faults", action="store_true",
                   help="a scenario without Eve and the link cut")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, value, low in (("--pairs", args.pairs, 1), ("--max-hops", args.max_hops, 1),
                             ("--bb84-links", args.bb84_links, 0)):
        if value < low:
            raise UserError(f"{name}: {value} must be at least {low}")
    for name, value in (("--length-km", args.length_km), ("--area-km", args.area_km),
                        ("--degree", args.degree), ("--source-rate", args.source_rate)):
        if not value > 0:
            raise UserError(f"{name}: {value} must be positive")
    spec = Spec(shape=args.shape, nodes=args.nodes, seed=args.seed, name=args.name,
                octet=args.octet, length_km=args.length_km, area_km=args.area_km,
                degree=args.degree, model=args.model, bb84_links=args.bb84_links,
                reconciliation=args.reconciliation,
                source_rate_hz=args.source_rate, control=args.control, pairs=args.pairs,
                max_hops=args.max_hops, faults=not args.no_faults)
    paths = generate(spec, Path(args.out))
    lab, problems = check_lab(paths[0])
    if problems or lab is None:  # a generator bug: say so rather than leave a broken lab
        raise UserError(f"generated {paths[0]} is not valid:\n  " + "\n  ".join(problems))
    for path in paths:
        print(f"wrote {path}")
    print(f"lab {lab.name}: {len(lab.nodes)} nodes, {len(lab.qkd_links)} QKD links, "
          f"{sum(len(u.applications) for u in lab.users)} applications; next: "
          f"qkdtwin deploy {paths[0]} && qkdtwin scenario {paths[0]} {paths[2]}")
    return 0
