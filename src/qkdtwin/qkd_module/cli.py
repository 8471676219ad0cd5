"""`qkdtwin eve LAB A:B --fraction F`: switch the intercept-resend eavesdropper of a QKD link
at run time.

Mechanism: an operator message on the MQTT topic `qkd/v1/km/<a>/qkd/<link>/eve`, published
with the host's certificate (`labs/clab-<lab>/pki/host.{crt,key}`; the broker ACL lets
`host` write everything and a KM node read `qkd/v1/km/<node>/#`). The module at the link's a
end (Alice, where the channel is emulated) applies it to the following pulses and publishes
its telemetry at once; the command waits for that telemetry to confirm the new fraction.
The same works on both runtimes, since the host reaches the broker on the mgmt network.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from qkdtwin import bus as topics
from qkdtwin.bus import Bus
from qkdtwin.errors import UserError
from qkdtwin.qkd_module.service import eve_topic


def find_link(lab: Any, spec: str) -> Any:
    """The QKD link between the two nodes of `A:B` (either order)."""
    a, sep, b = spec.partition(":")
    if not sep or not a or not b:
        raise UserError(f"{spec!r}: name a link as NODE:NODE, e.g. km0:km1")
    for lk in lab.qkd_links:
        if {lk.a.node, lk.b.node} == {a, b}:
            return lk
    known = ", ".join(f"{lk.a.node}:{lk.b.node}" for lk in lab.qkd_links) or "none"
    raise UserError(f"lab {lab.name} has no QKD link between {a} and {b} (QKD links: {known})")


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: the fraction must be in [0, 1]")
    return f


def set_eve(lab_ref: str, spec: str, fraction: float, timeout: float = 10.0) -> dict[str, Any]:
    """Send the command and return the a-end module's confirming telemetry."""
    from qkdtwin.control.cli import lab_connection
    from qkdtwin.topology import load_lab

    lab = load_lab(lab_ref)
    link = find_link(lab, spec)
    broker = lab_connection(lab_ref)
    node = link.a.node
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_telemetry(topic: str, payload: dict[str, Any], msg: Any) -> None:
        f = payload.get("eve_fraction")
        if isinstance(f, int | float) and abs(float(f) - fraction) < 1e-9:
            got.append(payload)
            done.set()

    b = Bus(broker, "host", workers=1)
    b.subscribe(topics.telemetry(node, link.id), on_telemetry, qos=0)
    b.start(wait=0)
    try:
        if not b.wait_connected(timeout):
            raise UserError(f"broker {broker.host}:{broker.port} not reachable "
                            f"(is lab {lab.name} deployed?)")
        b.publish(eve_topic(node, link.id), {"type": "eve", "link": link.id,
                                             "fraction": fraction})
        if not done.wait(timeout):
            raise UserError(f"the QKD module of {link.id} at {node} did not confirm within "
                            f"{timeout:.0f} s (is it running? qkdtwin deploy {lab_ref})")
    finally:
        b.stop()
    return got[0]


def cmd_eve(args: argparse.Namespace) -> int:
    fraction = 0.0 if args.off else args.fraction
    if fraction is None:
        raise UserError("give --fraction F (0..1) or --off")
    t = set_eve(args.lab, args.link, fraction, args.timeout)
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
