"""The intercept-resend eavesdropper of a QKD link, switched at run time from the host.

Mechanism: an operator message on the MQTT topic `qkd/v1/km/<a>/qkd/<link>/eve`, published
with the host's certificate (`labs/clab-<lab>/pki/host.{crt,key}`; the broker ACL lets
`host` write everything and a KM node read `qkd/v1/km/<node>/#`). The module at the link's a
end (Alice, where the channel is emulated) applies it to the following pulses and publishes
its telemetry at once; :func:`set_eve` waits for that telemetry to confirm the new fraction.
The same works on every runtime, since the host reaches the broker on the mgmt network.
"""

from __future__ import annotations

import threading
from typing import Any

from qkdtwin import bus as topics
from qkdtwin.bus import Bus
from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.messages import EveCommand
from qkdtwin.qkd_module.service import eve_topic
from qkdtwin.topology import Lab, Link


def find_link(lab: Lab, spec: str) -> Link:
    """The QKD link between the two nodes of `A:B` (either order)."""
    a, sep, b = spec.partition(":")
    if not sep or not a or not b:
        raise UserError(f"{spec!r}: name a link as NODE:NODE, e.g. km0:km1")
    for lk in lab.qkd_links:
        if {lk.a.node, lk.b.node} == {a, b}:
            return lk
    known = ", ".join(f"{lk.a.node}:{lk.b.node}" for lk in lab.qkd_links) or "none"
    raise UserError(f"lab {lab.name} has no QKD link between {a} and {b} (QKD links: {known})")


def set_eve(lab: DeployedLab, spec: str, fraction: float,
            timeout: float = 10.0) -> dict[str, Any]:
    """Switch the eavesdropper of link `A:B`; returns the a-end module's confirming
    telemetry (UserError when it does not confirm within ``timeout``)."""
    link = find_link(lab.lab, spec)
    broker = lab.broker_config()
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
        b.publish(eve_topic(node, link.id),
                  EveCommand(link=link.id, fraction=fraction).to_payload())
        if not done.wait(timeout):
            raise UserError(f"the QKD module of {link.id} at {node} did not confirm within "
                            f"{timeout:.0f} s (is it running? qkdtwin deploy {lab.name})")
    finally:
        b.stop()
    return got[0]
