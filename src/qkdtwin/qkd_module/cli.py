"""`qkdtwin eve LAB A:B --fraction F`: switch the intercept-resend eavesdropper of a QKD link
at run time.

Mechanism: an operator message on the MQTT topic `qkd/v1/km/<a>/qkd/<link>/eve`, published
with the host's certificate (`labs/clab-<lab>/pki/host.{crt,key}`; the broker ACL lets
`host` write everything and a KM node read `qkd/v1/km/<node>/#`). The module at the link's a
end (Alice, where the channel is emulated) applies it to the following pulses and publishes
its telemetry at once; the command waits for that telemetry to confirm the new fraction.
The same works on every runtime, since the host reaches the broker on the mgmt network
(:mod:`qkdtwin.labops.eve`).
"""

from __future__ import annotations

import argparse
import json

from qkdtwin.errors import UserError
from qkdtwin.labops.eve import set_eve
from qkdtwin.labops.lab import DeployedLab


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: the fraction must be in [0, 1]")
    return f


def cmd_eve(args: argparse.Namespace) -> int:
    fraction = 0.0 if args.off else args.fraction
    if fraction is None:
        raise UserError("give --fraction F (0..1) or --off")
    t = set_eve(DeployedLab.load(args.lab), args.link, fraction, args.timeout)
    if args.json:
        print(json.dumps(t, indent=2))
    else:
        state = (f"intercept-resend on {fraction:.0%} of the pulses" if fraction > 0
                 else "no eavesdropper")
        qber = t.get("qber")
        print(f"{t['link']}: {state} (confirmed by the module at {t['node']}; "
              f"last block QBER {qber if qber is None else f'{qber:.4f}'}, "
              f"status {t.get('status')})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eve", help="switch the eavesdropper of a QKD link at run time",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("lab", help="lab name or topology file (deployed)")
    p.add_argument("link", help="the QKD link as NODE:NODE, e.g. km0:km2")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--fraction", type=_fraction,
                   help="fraction of pulses Eve intercepts and resends (0 = off, 1 = all)")
    g.add_argument("--off", action="store_true", help="switch the eavesdropper off")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the module's confirmation (default 10)")
    p.add_argument("--json", action="store_true", help="print the confirming telemetry")
    p.set_defaults(func=cmd_eve)
