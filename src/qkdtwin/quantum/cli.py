"""`qkdtwin keyrate`: analytic key rates of a link, per distance, as a table, JSON or plot."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.quantum import keyrate, link
from qkdtwin.quantum.params import FINITE_KEY, PRESETS, LinkParams


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keyrate", help="analytic BB84 key rates (decoy, no decoy, ideal) of a link",
        description="Gain, QBER, optimal mu and asymptotic secret key rate per model.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="standard parameter set (default: gys when no --lab)")
    src.add_argument("--lab", help="topology file; use with --link A:B")
    p.add_argument("--link", help="link endpoints by node name, e.g. km0:km1")
    p.add_argument("--distance", help="comma-separated distances in km (default: the link's)")
    p.add_argument("--max-distance", action="store_true",
                   help="print the distance where each model's rate reaches zero")
    p.add_argument("--block-size", metavar="BITS",
                   help="sifted signal bits per block for the finite-key rates "
                        "(default: the link's block_size, 100000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE.png", help="draw rate vs distance for all models")
    p.set_defaults(func=run)


def _load_lab_link(lab: str, link: str | None) -> LinkParams:
    import yaml

    if not link or ":" not in link:
        raise UserError("--lab needs --link A:B (node names of the link's endpoints)")
    a, b = link.split(":", 1)
    path = Path(lab)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {lab}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{lab}: not valid YAML: {exc}") from exc
    links = ((doc or {}).get("topology") or {}).get("links") or []
    for ln in links:
        eps = [str(e).split(":", 1)[0] for e in (ln or {}).get("endpoints", [])]
        if sorted(eps) == sorted([a, b]):
            qkd = ((ln.get("vars") or {}).get("qkd"))
            if qkd is None:
                raise UserError(f"link {a}-{b} in {lab} has no vars.qkd (classical-only link)")
            try:
                return LinkParams.from_vars(qkd)
            except ValueError as exc:
                raise UserError(f"link {a}-{b} in {lab}: {exc}") from exc
    raise UserError(f"no link between {a} and {b} in {lab}")


def _distances(spec: str | None, default: float) -> list[float]:
    if not spec:
        return [default]
    out = []
    for part in spec.split(","):
        try:
            d = float(part)
        except ValueError:
            raise UserError(f"--distance: {part!r} is not a number") from None
        if not (math.isfinite(d) and 0.0 <= d <= 1000.0):
            raise UserError(f"--distance: {part!r} out of range [0, 1000] km")
        out.append(d)
    return out


def _block_size(spec: str | None) -> int | None:
    if spec is None:
        return None
    try:
        size = float(spec)
    except ValueError:
        raise UserError(f"--block-size: {spec!r} is not a number") from None
    if not (math.isfinite(size) and 1000 <= size <= 1e12 and size == int(size)):
        raise UserError(f"--block-size: {spec!r} must be a whole number of bits in [1000, 1e12]")
    return int(size)


def run(args: argparse.Namespace) -> int:
    if args.lab:
        params = _load_lab_link(args.lab, args.link)
    else:
        if args.link:
            raise UserError("--link needs --lab")
        params = LinkParams.preset(args.preset or "gys")
    if args.max_distance:
        result = {m: keyrate.max_distance(params, m) for m in keyrate.MODELS}
        if args.json:
            print(json.dumps({"max_distance_km": result}, indent=2))
        else:
            for m, d in result.items():
                print(f"{m:18s} {d:8.1f} km")
        return 0
    dists = _distances(args.distance, params.length_km)
    block = _block_size(args.block_size)
    rows = []
    for d in dists:
        q = params.replace(length_km=d)
        rows.append({"distance_km": d,
                     "models": {m: keyrate.evaluate(q, m).to_dict() for m in keyrate.MODELS},
                     "finite_key": link.finite_key_rates(q, block)})
    if args.plot:
        _plot(params, dists, args.plot, block)
    if args.json:
        print(json.dumps({"params": params.to_dict(), "points": rows}, indent=2))
        return 0
    print(f"{'km':>6} {'model':18s} {'gain':>10} {'QBER':>7} {'rate/pulse':>11} {'rate b/s':>11}"
          f" {'opt mu':>7} {'opt b/s':>11}")
    for r in rows:
        for m, v in r["models"].items():
            mu = "-" if v["optimal_mu"] is None else f"{v['optimal_mu']:.3f}"
            print(f"{r['distance_km']:6.1f} {m:18s} {v['gain']:10.3e} {v['qber']:7.4f}"
                  f" {v['rate_per_pulse']:11.3e} {v['rate_bps']:11.4g} {mu:>7}"
                  f" {v['optimal_rate_bps']:11.4g}")
        _print_finite(r["finite_key"], r["distance_km"])
    return 0


def _print_finite(fk: dict, distance: float) -> None:
    """Finite-key rows: the link's own mu, blocks of fk['block_size'] sifted signal bits."""
    print(f"{distance:6.1f} {'asymptotic @ mu':18s} {'':10} {'':7}"
          f" {fk['asymptotic_rate_per_pulse']:11.3e} {fk['asymptotic_rate_bps']:11.4g}")
    for method, v in fk["methods"].items():
        name = f"finite {method}"
        if "error" in v:
            print(f"{distance:6.1f} {name:18s} ({v['error']})")
            continue
        print(f"{distance:6.1f} {name:18s} {'':10} {'':7} {v['rate_per_pulse']:11.3e}"
              f" {v['rate_bps']:11.4g}   block {fk['block_size']:,} bits"
              f" = {fk['block_pulses']:,} pulses")


def _plot(params: LinkParams, dists: list[float], path: str, block: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(max(dists), 160.0)
    xs = [top * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in keyrate.MODELS:
        ys = [keyrate.optimal_mu(params.replace(length_km=x), m)[1] for x in xs]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m)
    # the link's own mu: asymptotic (dashed) and each finite-key bound for this block size
    finite = [link.finite_key_rates(params.replace(length_km=x), block) for x in xs]
    size = finite[0]["block_size"]
    curves = {f"asymptotic, mu {params.mu:g}": [f["asymptotic_rate_per_pulse"] for f in finite]}
    for method in FINITE_KEY:
        if "error" not in finite[0]["methods"][method]:
            curves[f"finite {method}, {size:.0e} bits"] = [
                f["methods"][method]["rate_per_pulse"] for f in finite]
    for label, ys in curves.items():
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label,
                    linestyle="--" if label.startswith("asymptotic") else ":")
    ax.set_yscale("log")
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("secret key rate per pulse")
    ax.set_title("BB84 key rate: asymptotic (optimal mu) and finite-key (link's mu)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        plt.close(fig)
