"""Parameters of one emulated QKD link: the `vars.qkd` block of a topology link.

`LinkParams.from_vars` is the single place that checks units and ranges; the topology
validator calls `validate_qkd_vars` to get one message per problem instead of the first one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

PROTOCOLS = ("bb84-decoy", "bb84", "ideal")
# how a block's secret length is bounded (docs/quantum.md, "Finite-key length")
FINITE_KEY = ("gaussian", "lim2014")
# what emulates the link (docs/quantum.md, "Link models"): bb84 runs pulses and the whole
# post-processing; statistical draws the sifted strings and runs the post-processing;
# analytic hands out key at the rate the model predicts, nothing else
MODELS = ("bb84", "statistical", "analytic")
# how a bb84 link reconciles (docs/quantum.md, "Reconciliation"): interactive Cascade or
# one-way LDPC syndrome decoding
RECONCILIATION = ("cascade", "ldpc")
_CHOICES = {"protocol": PROTOCOLS, "finite_key": FINITE_KEY, "model": MODELS,
            "reconciliation": RECONCILIATION}

# The standard comparison set (Gobby, Yuan, Shields 2004; used by Lo-Ma-Chen and MQZL05).
GYS = {
    "protocol": "bb84-decoy",
    "attenuation_db_per_km": 0.21,
    "detector_efficiency": 0.045,
    "dark_count_prob": 1.7e-6,
    "misalignment": 0.033,
    "ec_efficiency": 1.22,
    "mu": 0.48,
    "nu": 0.1,
    "source_rate_hz": 100.0e6,
}
PRESETS: dict[str, dict[str, Any]] = {"gys": GYS}


@dataclass(frozen=True)
class LinkParams:
    """One link's quantum channel, source, detector and post-processing settings.

    Units: km, dB/km, Hz, mean photon numbers per pulse, probabilities per pulse.
    """

    protocol: str = "bb84-decoy"
    model: str = "bb84"
    length_km: float = 25.0
    attenuation_db_per_km: float = 0.21
    source_rate_hz: float = 100.0e6
    mu: float = 0.5              # signal intensity
    nu: float = 0.1              # weak decoy intensity
    detector_efficiency: float = 0.045  # eta_Bob: detector efficiency times Bob's optics
    dark_count_prob: float = 1.7e-6     # Y0: background clicks per pulse (both detectors)
    misalignment: float = 0.033         # e_det: error probability of a detected photon
    eve_fraction: float = 0.0           # fraction of pulses attacked by intercept-resend
    block_size: int = 100_000           # sifted signal bits per post-processing block
    # extras (not usually in a lab file)
    vacuum: float = 0.0                 # vacuum decoy intensity (0 = true vacuum)
    p_signal: float = 0.8               # probability a pulse is sent at mu (decoy protocol)
    p_decoy: float = 0.1                # at nu; the rest is vacuum
    ec_efficiency: float = 1.22         # f used by the analytic models
    reconciliation: str = "cascade"     # cascade (interactive) or ldpc (one message a block)
    qber_abort: float = 0.11            # abort a block whose estimated QBER exceeds this
    sample_fraction: float = 0.05       # sifted signal bits disclosed to estimate the QBER
    security_margin: int = 64           # bits removed in privacy amplification (eps_PA)
    stat_sigmas: float = 5.0            # standard deviations in finite-size bounds (gaussian)
    finite_key: str = "gaussian"        # gaussian: stat_sigmas; lim2014: Lim et al. 2014
    eps_sec: float = 1e-10              # lim2014: secrecy parameter of each block's key
    time_scale: float = 1.0             # >1 makes a service run faster than real time

    # ------------------------------------------------------------------ derived
    @property
    def channel_transmittance(self) -> float:
        return 10.0 ** (-self.attenuation_db_per_km * self.length_km / 10.0)

    @property
    def eta(self) -> float:
        """Overall transmittance: channel times Bob's detection efficiency."""
        return self.detector_efficiency * self.channel_transmittance

    @property
    def intensity_classes(self) -> tuple[tuple[float, float], ...]:
        """(probability, mean photon number) per intensity class: signal, decoy, vacuum."""
        if self.protocol == "bb84-decoy":
            p_vac = max(0.0, 1.0 - self.p_signal - self.p_decoy)
            return ((self.p_signal, self.mu), (self.p_decoy, self.nu), (p_vac, self.vacuum))
        return ((1.0, self.mu), (0.0, self.nu), (0.0, self.vacuum))

    def replace(self, **changes: Any) -> LinkParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_vars(cls, d: dict[str, Any] | None, *, base: LinkParams | None = None) -> LinkParams:
        """Build from a `vars.qkd` mapping; raise ValueError naming the first bad field."""
        problems = _check(d, base)
        if problems:
            raise ValueError(problems[0])
        values = dataclasses.asdict(base or cls())
        for name, value in (d or {}).items():
            values[name] = _coerce(name, value)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LinkParams:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        return cls.from_vars({**PRESETS[name], **overrides})


_FIELD_TYPES = {f.name: f.type for f in fields(LinkParams)}

# name: (low, high, low_inclusive, high_inclusive, unit/meaning)
_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    "length_km": (0.0, 1000.0, True, True, "km"),
    "attenuation_db_per_km": (0.0, 10.0, True, True, "dB/km"),
    "source_rate_hz": (1.0, 1.0e11, True, True, "pulses per second"),
    "mu": (0.0, 10.0, False, True, "mean photons per signal pulse"),
    "nu": (0.0, 10.0, False, True, "mean photons per decoy pulse"),
    "detector_efficiency": (0.0, 1.0, False, True, "probability"),
    "dark_count_prob": (0.0, 0.1, True, True, "probability per pulse"),
    "misalignment": (0.0, 0.5, True, True, "probability"),
    "eve_fraction": (0.0, 1.0, True, True, "fraction of pulses"),
    "block_size": (1000, 1.0e9, True, True, "sifted bits"),
    "vacuum": (0.0, 1.0, True, False, "mean photons per vacuum pulse"),
    "p_signal": (0.0, 1.0, False, True, "probability"),
    "p_decoy": (0.0, 1.0, True, False, "probability"),
    "ec_efficiency": (1.0, 3.0, True, True, "leak / (n H2(e))"),
    "qber_abort": (0.0, 0.5, False, True, "probability"),
    "sample_fraction": (0.0, 0.5, False, True, "fraction"),
    "security_margin": (0, 1.0e6, True, True, "bits"),
    "stat_sigmas": (0.0, 20.0, True, True, "standard deviations"),
    "eps_sec": (0.0, 0.01, False, True, "probability"),
    "time_scale": (0.0, 1.0e6, False, True, "speed-up factor"),
}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    if kind == "str":
        return str(value)
    if kind == "int":
        return int(value)
    return float(value)


def _check(d: Any, base: LinkParams | None = None) -> list[str]:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        return [f"qkd: expected a mapping of link parameters, got {type(d).__name__}"]
    problems: list[str] = []
    for name, value in d.items():
        if name not in _FIELD_TYPES:
            problems.append(f"qkd.{name}: unknown field (known: {', '.join(_FIELD_TYPES)})")
            continue
        kind = _FIELD_TYPES[name]
        if kind == "str":
            if value not in _CHOICES[name]:
                problems.append(
                    f"qkd.{name}: {value!r} is not one of {', '.join(_CHOICES[name])}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"qkd.{name}: expected a number, got {value!r}")
            continue
        if not math.isfinite(float(value)):
            problems.append(f"qkd.{name}: must be finite, got {value!r}")
            continue
        if kind == "int" and float(value) != int(value):
            problems.append(f"qkd.{name}: expected a whole number, got {value!r}")
            continue
        lo, hi, lo_inc, hi_inc, unit = _RANGES[name]
        v = float(value)
        if (v < lo or (v == lo and not lo_inc)) or (v > hi or (v == hi and not hi_inc)):
            lb = "[" if lo_inc else "("
            rb = "]" if hi_inc else ")"
            problems.append(f"qkd.{name}: {value!r} out of range {lb}{lo:g}, {hi:g}{rb} ({unit})")
    if problems:
        return problems
    # cross-field checks on the merged values
    merged = {**dataclasses.asdict(base or LinkParams()), **d}
    if merged["protocol"] == "bb84-decoy":
        if not merged["nu"] < merged["mu"]:
            problems.append(
                f"qkd.nu: decoy intensity {merged['nu']!r} must be below mu {merged['mu']!r}"
            )
        if not merged["vacuum"] < merged["nu"]:
            problems.append(
                f"qkd.vacuum: vacuum intensity {merged['vacuum']!r} must be below nu"
            )
        if merged["p_signal"] + merged["p_decoy"] > 1.0:
            problems.append("qkd.p_decoy: p_signal + p_decoy must not exceed 1")
    if merged["finite_key"] == "lim2014":
        problems += _lim2014_problems(merged)
    return problems


def _lim2014_problems(m: dict[str, Any]) -> list[str]:
    """Lim et al. need three intensities mu > nu + vacuum, each sent with some probability."""
    if m["protocol"] != "bb84-decoy":
        return [f"qkd.finite_key: lim2014 needs protocol bb84-decoy, not {m['protocol']!r}"]
    out = []
    if not m["mu"] > m["nu"] + m["vacuum"]:
        out.append(f"qkd.mu: lim2014 needs mu > nu + vacuum, got mu {m['mu']!r}, "
                   f"nu {m['nu']!r}, vacuum {m['vacuum']!r}")
    if m["p_decoy"] <= 0.0 or m["p_signal"] + m["p_decoy"] >= 1.0:
        out.append("qkd.p_decoy: lim2014 needs decoy and vacuum pulses "
                   "(p_decoy > 0 and p_signal + p_decoy < 1)")
    return out


def validate_qkd_vars(d: Any) -> list[str]:
    """One human-readable message per problem in a link's `vars.qkd`; empty when valid."""
    return _check(d)
