"""The model's prediction of a module's key rate, for the module's own block size.

`qkdtwin.quantum.link.predict_block` feeds the analytic gains and QBERs of
`qkdtwin.quantum.keyrate` through the emulator's own finite-size choices: expected counts per
intensity class, the same decoy estimation with `stat_sigmas` Poisson deviations, a Cascade
leak of 1.07 n H2(QBER) (what benchmarks/bench_reconcile.py measures) or the LDPC plan's
syndrome bits, 64 verification bits per frame and `security_margin`. A module
post-processes blocks of exactly `block_pulses(params)` pulses, so its prediction is that
function at that block size: key bits per block over the block's link time. A module
delivers `time_scale` times that per wall second when its real-time factor is 1
(docs/quantum.md, "QKD module service").
"""

from __future__ import annotations

from typing import Any

from qkdtwin.qkd_module.config import block_pulses
from qkdtwin.quantum import keyrate
from qkdtwin.quantum.link import predict_block
from qkdtwin.quantum.params import LinkParams


def block_prediction(p: LinkParams) -> dict[str, Any]:
    """Expected outcome of one of the module's blocks, and the link's predicted rates."""
    n = block_pulses(p)
    pred = predict_block(p, n)
    est = pred["estimate"]
    link_s = n / p.source_rate_hz
    return {"block_pulses": n, "block_link_s": link_s, "secret_bits": pred["secret_bits"],
            "sifted_bits": pred["sifted_signal"], "qber": est.qber, "aborted": est.aborted,
            "skr_bps": pred["secret_bits"] / link_s, "sifted_bps": pred["sifted_signal"] / link_s,
            "asymptotic_skr_bps": keyrate.rate_per_pulse(p, keyrate.protocol_model(p))
            * p.source_rate_hz}
