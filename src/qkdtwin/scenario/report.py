"""The scenario result as a table for people (JSON is :meth:`ScenarioResult.as_dict`)."""

from __future__ import annotations

from qkdtwin.scenario.runner import ScenarioResult


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def format_table(result: ScenarioResult) -> str:
    head = ("pair", "api", "applications", "path", "keys", "first key", "p50", "p95",
            "retries", "result")
    rows = []
    for p in result.pairs:
        path = (" => ".join("-".join(x) for x in p.paths) if p.paths
                else f"{p.src_km}..{p.dst_km} (path not recorded)")
        keys = f"{p.keys_matched}/{p.keys_wanted}"
        if p.mismatches:
            keys += f" ({p.mismatches} differ)"
        if p.withdrawn:
            keys += f" ({p.withdrawn} withdrawn)"
        verdict = {"ok": "ok", "refused": "refused (expected)"}.get(p.state, p.state.upper())
        rows.append((p.name, p.api, f"{p.src}->{p.dst}", path, keys, _s(p.first_key_s),
                     _s(p.percentile(0.5)), _s(p.percentile(0.95)), str(p.retries), verdict))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for p in result.pairs:
        for e in dict.fromkeys(p.errors):  # each distinct error once
            lines.append(f"  {p.name}: {e}")
    for f in result.faults:
        at = "-" if f.applied_s is None else f"{f.applied_s:.1f} s"
        state = "ok" if f.ok else f"FAILED: {f.error}" if f.ok is False else "not applied"
        lines.append(f"fault at {at}: {f.fault.describe()}: {state}")
    passed = sum(p.passed for p in result.pairs)
    matched = sum(p.keys_matched for p in result.pairs)
    verdict = "PASSED" if result.ok else "FAILED"
    lines.append(f"scenario {result.scenario} on {result.lab}: {verdict} — {passed}/"
                 f"{len(result.pairs)} pairs ok, {matched} keys identical at both ends, "
                 f"{result.duration:.1f} s")
    return "\n".join(lines)
