"""The TCP link between the two modules of a QKD link: socket options, frame-size bounds and
the TLS that keeps the emulated quantum channel unreadable on the classical network.

Why TLS on the quantum connection: the `frame` messages carry Alice's bits and bases (what a
real fibre carries as single photons, which a passive tap cannot copy without raising the
QBER). In clear on TCP, a sniffer on the p2p link would read the key without disturbing
anything, so the twin would leak what physics protects. With `tls` configured (the role
always configures the node certificates), the quantum connection is mutual TLS with the
lab CA, and each end checks that the other's certificate names the configured peer node.
The classical connection stays plain: its post-processing messages are public in BB84 (a
real system authenticates them; docs/quantum.md).
"""

from __future__ import annotations

import functools
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from qkdtwin.qkd_module.framing import MAX_FRAME

PROTOCOL_VERSION = 1

CLASSICAL_MAX = MAX_FRAME   # post-processing messages of a block
HELLO_MAX = 64 * 1024       # a hello (or its answer) is a few hundred bytes
FRAME_HEADER_MAX = 4096     # JSON header of a channel frame
BYTES_PER_DETECTION = 9     # slot gap (at most 8 bytes) + one state byte


def quantum_frame_max(frame_pulses: int) -> int:
    """The largest well-formed channel frame for `frame_pulses` pulses (one detection per
    pulse at most)."""
    return FRAME_HEADER_MAX + BYTES_PER_DETECTION * max(1, frame_pulses)


def tune(sock: socket.socket) -> None:
    """Notice a vanished peer within seconds even when nothing is being sent."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 3), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                     ("TCP_USER_TIMEOUT", 15000)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)


@dataclass(frozen=True)
class PeerTls:
    """Mutual TLS of the quantum connection with the node certificate (paths)."""

    ca: str
    cert: str
    key: str

    @functools.lru_cache(maxsize=2)  # noqa: B019 (two per module process, kept for its life)
    def _context(self, server: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False  # the peer is checked by node name (CN) below
        return ctx

    def wrap(self, sock: socket.socket, peer: str, server: bool) -> ssl.SSLSocket:
        """Handshake on `sock` (its timeout applies) and check that the peer certificate's
        CN is `peer`; ssl.SSLError (an OSError) otherwise."""
        tls = self._context(server).wrap_socket(sock, server_side=server)
        subject = dict(x[0] for x in (tls.getpeercert() or {}).get("subject", ()))
        if subject.get("commonName") != peer:
            tls.close()
            raise ssl.SSLError(f"peer certificate names {subject.get('commonName')!r}, "
                               f"not the link's peer {peer!r}")
        return tls


def check_hello(link: str, block_pulses: int, tls: bool, h: dict[str, Any],
                over_tls: bool, model: str = "bb84") -> str:
    """Why Bob (serving `link`, TLS configured or not) refuses this hello ('' when he
    accepts it); the source address was checked before the first byte was read."""
    if h.get("type") != "hello" or h.get("version") != PROTOCOL_VERSION:
        return "not a qkdtwin module hello of protocol version 1"
    if h.get("link") != link:
        return f"this module serves link {link}, not {h.get('link')}"
    if h.get("channel") not in ("classical", "quantum"):
        return f"unknown channel {h.get('channel')!r}"
    if tls and (h["channel"] == "quantum") != over_tls:
        return "the quantum channel (and only it) runs over TLS with the node certificates"
    if h["channel"] == "classical" and int(h.get("block_pulses", -1)) != block_pulses:
        return (f"block size mismatch: peer uses {h.get('block_pulses')} pulses per block, "
                f"this end {block_pulses} (different vars.qkd at the two ends?)")
    if h["channel"] == "classical" and h.get("model", "bb84") != model:
        return (f"link model mismatch: peer runs {h.get('model')!r}, this end {model!r} "
                f"(different vars.qkd at the two ends?)")
    return ""
