"""Length-prefixed frames between the two modules of a link, over TCP on the p2p link.

A frame is a 4-byte big-endian payload length followed by the payload, which is one
`qkdtwin.quantum.wire` message (JSON header + raw numpy buffers). Frames larger than
the connection's `max_frame` (at most `MAX_FRAME`; the engine bounds it by the frame types
it expects: a hello, a channel frame of at most 10^7 pulses) are refused, and a frame's
buffer grows with the bytes that actually arrive, so a length field alone allocates
nothing (a garbled or hostile stream closes the connection instead of allocating memory).
Channel frames use a compact form (`pack_channel`): slot positions as gaps in the smallest
unsigned type that holds them, basis/value/multi in one byte.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import numpy as np

from qkdtwin.quantum import wire
from qkdtwin.quantum.channel import ChannelFrame

MAX_FRAME = 256 * 1024 * 1024
_LEN = struct.Struct(">I")


class FrameError(ConnectionError):
    """The peer sent something that is not a valid frame, or the connection closed."""


_CHUNK = 1 << 20


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """`n` bytes; memory is taken chunk by chunk as they arrive, not up front."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = sock.recv(min(n - got, _CHUNK))
        if not part:
            raise FrameError("connection closed by peer")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class FramedSocket:
    """A TCP socket carrying frames; `send` is thread-safe, `recv` is for one reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._wlock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_frame = MAX_FRAME  # set per connection by what the next frames can be

    def send(self, msg: dict[str, Any]) -> None:
        data = wire.encode(msg)
        with self._wlock:
            self.sock.sendall(_LEN.pack(len(data)) + data)
            self.bytes_sent += len(data) + 4

    def recv(self) -> dict[str, Any]:
        (n,) = _LEN.unpack(_recv_exact(self.sock, 4))
        limit = min(self.max_frame, MAX_FRAME)
        if n > limit:
            raise FrameError(f"frame of {n} bytes exceeds the limit of {limit}")
        data = _recv_exact(self.sock, n)
        self.bytes_received += n + 4
        try:
            msg = wire.decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise FrameError(f"undecodable frame: {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise FrameError("frame without a message type")
        return msg

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def pack_channel(frame: ChannelFrame, eve_fraction: float) -> dict[str, Any]:
    """A channel frame as a compact message (positions as gaps, state in one byte)."""
    pos = frame.positions
    gaps = np.diff(pos, prepend=np.int64(frame.offset)) if len(pos) else pos
    top = int(gaps.max()) if len(gaps) else 0
    dtype = np.uint16 if top < 1 << 16 else np.uint32 if top < 1 << 32 else np.uint64
    state = (frame.basis << 1 | frame.value | frame.multi.astype(np.uint8) << 2).astype(np.uint8)
    return {"type": "frame", "index": frame.index, "offset": frame.offset,
            "n_pulses": frame.n_pulses, "gaps": gaps.astype(dtype), "state": state,
            "eve": float(eve_fraction)}


def unpack_channel(msg: dict[str, Any]) -> ChannelFrame:
    """The inverse of `pack_channel`; ValueError on inconsistent content."""
    offset, n = int(msg["offset"]), int(msg["n_pulses"])
    gaps = np.asarray(msg["gaps"]).astype(np.int64)
    state = np.asarray(msg["state"], np.uint8)
    if len(gaps) != len(state) or n < 0:
        raise ValueError("channel frame: gaps and states differ in length")
    pos = np.cumsum(gaps) + offset
    if len(pos) and (pos[-1] >= offset + n or (gaps[1:] <= 0).any()):
        raise ValueError("channel frame: slot positions outside the frame or unsorted")
    return ChannelFrame(int(msg["index"]), offset, n, pos, (state >> 1) & 1, state & 1,
                        (state >> 2 & 1).astype(bool))
