"""Link impairments (`vars.impairment`) of the netns runtime: `tc netem` on both ends of a
link when the kernel has it, else `tbf` for rate and nftables for loss (delay and jitter are
then reported as not applied); and reading back what is applied, for `status`."""

from __future__ import annotations

import re
import shutil

from qkdtwin.runtime.base import Log, UpResult
from qkdtwin.runtime.netns.system import RuntimeFailure, run, run_json
from qkdtwin.topology import Lab, Link

NFT_TABLE = "qkdtwin"  # inside each node's namespace: `inet qkdtwin`
LOSS_SCALE = 10000  # nft loss resolution: 0.01 %
_LOSS_RULE = re.compile(r'oifname "([^"]+)" numgen random mod (\d+) < (\d+) drop')


def netem_args(imp: dict[str, float]) -> list[str]:
    args = ["netem"]
    if imp.get("delay_ms"):
        args += ["delay", f"{imp['delay_ms']:g}ms"]
        if imp.get("jitter_ms"):
            args += [f"{imp['jitter_ms']:g}ms"]
    if imp.get("loss_percent"):
        args += ["loss", f"{imp['loss_percent']:g}%"]
    if imp.get("rate_mbit"):
        args += ["rate", f"{imp['rate_mbit']:g}mbit"]
    return args


def tbf_args(rate_mbit: float) -> list[str]:
    rate_bytes = rate_mbit * 1e6 / 8
    # Burst: 10 ms worth of traffic, at least a few MTU-sized packets.
    burst = max(int(rate_bytes / 100), 4 * 1514)
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "50ms"]


def root_qdisc(ns: str, ifname: str) -> dict | None:
    for q in run_json(["tc", "-n", ns, "-j", "qdisc", "show", "dev", ifname]):
        if q.get("root"):
            return q
    return None


class _Impairer:
    """Applies every link's impairment; remembers whether this kernel has sch_netem."""

    def __init__(self, lab: Lab, log: Log, result: UpResult) -> None:
        self.lab, self.log, self.result = lab, log, result
        self.netem: bool | None = None  # unknown until the first attempt
        self.loss_rules: dict[str, list[str]] = {lab.namespace(n): [] for n in lab.nodes}

    def link(self, link: Link) -> None:
        imp = {k: v for k, v in link.impairment.items() if v}
        missing: set[str] = set()
        for end in link.endpoints:
            missing |= self._end(link, end.node, end.interface, imp)
        if missing:
            what = ", ".join(f"{k}={imp[k]:g}" for k in sorted(missing))
            self.result.warnings.append(
                f"link {link.id}: {what} not applied: this kernel has no "
                f"sch_netem (rate and loss are applied with tbf/nftables)")

    def _end(self, link: Link, node: str, ifname: str, imp: dict[str, float]) -> set[str]:
        """Impair one end; returns the parameters that could not be applied there."""
        ns = self.lab.namespace(node)
        where = f"{node}:{ifname}"
        current = root_qdisc(ns, ifname)
        ours = current is not None and current.get("kind") in ("netem", "tbf")
        if not imp:
            if ours:
                run(["tc", "-n", ns, "qdisc", "del", "dev", ifname, "root"])
                self.log(f"link {link.id}: {where}: impairment removed")
            return set()
        if self.netem is not False:
            proc = run(["tc", "-n", ns, "qdisc", "replace", "dev", ifname, "root",
                        *netem_args(imp)], check=False)
            if proc.returncode == 0:
                self.netem = True
                self.log(f"link {link.id}: {where}: netem {' '.join(netem_args(imp)[1:])}")
                return set()
            if self.netem is None and "unknown" not in proc.stderr.lower():
                raise RuntimeFailure(f"tc netem on {where} failed: {proc.stderr.strip()}")
            self.netem = False
        # Fallback without sch_netem: tbf for rate, nftables for loss, nothing for delay.
        if imp.get("rate_mbit"):
            have = applied_from_qdisc(current) if current and \
                current.get("kind") == "tbf" else {}
            if abs(have.get("rate_mbit", -1) - imp["rate_mbit"]) > 1e-6 * imp["rate_mbit"]:
                run(["tc", "-n", ns, "qdisc", "replace", "dev", ifname, "root",
                     *tbf_args(imp["rate_mbit"])])
                self.log(f"link {link.id}: {where}: tbf rate {imp['rate_mbit']:g}mbit")
                self.result.changes += 1
        elif ours:
            run(["tc", "-n", ns, "qdisc", "del", "dev", ifname, "root"])
        if imp.get("loss_percent"):
            n = round(imp["loss_percent"] * LOSS_SCALE / 100)
            self.loss_rules[ns].append(
                f'oifname "{ifname}" numgen random mod {LOSS_SCALE} < {n} drop '
                f'comment "qkdtwin loss {imp["loss_percent"]:g}% link {link.id}"')
        return {k for k in ("delay_ms", "jitter_ms") if k in imp}


def apply_impairments(lab: Lab, log: Log, result: UpResult) -> None:
    impairer = _Impairer(lab, log, result)
    for link in lab.links:
        impairer.link(link)
    _apply_loss_tables(impairer.loss_rules, log, result)


def _apply_loss_tables(rules: dict[str, list[str]], log: Log, result: UpResult) -> None:
    have_nft = shutil.which("nft") is not None
    for ns, lines in rules.items():
        if not have_nft:
            if lines:
                result.warnings.append(f"{ns}: loss not applied: `nft` (nftables) is not "
                                       f"installed")
            continue
        if not lines:
            # Drop a table left from an earlier topology (no error if there is none).
            run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE],
                check=False)
            continue
        body = "\n".join(f"    {r}" for r in lines)
        script = (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                  f"table inet {NFT_TABLE} {{\n  chain impair_out {{\n"
                  f"    type filter hook postrouting priority 0; policy accept;\n"
                  f"{body}\n  }}\n}}\n")
        run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script)
        log(f"{ns}: nftables loss rules: {len(lines)}")


# --------------------------------------------------------------------------- reading back


def applied_from_qdisc(q: dict | None) -> dict[str, float]:
    if not q:
        return {}
    opts = q.get("options", {})
    if q.get("kind") == "tbf":
        return {"rate_mbit": round(opts.get("rate", 0) * 8 / 1e6, 6)}
    if q.get("kind") == "netem":
        out: dict[str, float] = {}
        if opts.get("delay"):
            out["delay_ms"] = opts["delay"].get("delay", 0) * 1000
            if opts["delay"].get("jitter"):
                out["jitter_ms"] = opts["delay"]["jitter"] * 1000
        if opts.get("loss-random"):
            out["loss_percent"] = opts["loss-random"].get("loss", 0) * 100
        if opts.get("rate"):
            out["rate_mbit"] = opts["rate"].get("rate", 0) * 8 / 1e6
        return out
    return {}


def nft_loss(ns: str) -> dict[str, float]:
    """Interface -> loss percent of the node's nftables loss rules."""
    if not shutil.which("nft"):
        return {}
    proc = run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", NFT_TABLE],
               check=False)
    if proc.returncode != 0:
        return {}
    return {m[1]: int(m[3]) * 100 / int(m[2]) for m in _LOSS_RULE.finditer(proc.stdout)}
