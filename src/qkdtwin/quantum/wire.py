"""Byte encoding of post-processing and channel messages for a network transport.

A message is a dict of JSON values and numpy arrays. Encoding: 4-byte big-endian length of a
JSON header, the header (arrays replaced by {"__nd__": index, "dtype", "shape"}), then the raw
array buffers in order. Only plain dtypes (bool, ints, floats) are accepted when decoding.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

_ALLOWED = {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8"}


def encode(msg: dict[str, Any]) -> bytes:
    buffers: list[bytes] = []

    def walk(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            buffers.append(a.tobytes())
            return {"__nd__": len(buffers) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}
        if isinstance(v, dict):
            return {str(k): walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    header = walk(msg)
    header = {"m": header, "sizes": [len(b) for b in buffers]}
    hb = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(hb)) + hb + b"".join(buffers)


def decode(data: bytes) -> dict[str, Any]:
    if len(data) < 4:
        raise ValueError("message too short")
    (hlen,) = struct.unpack(">I", data[:4])
    if 4 + hlen > len(data):
        raise ValueError("truncated message header")
    header = json.loads(data[4:4 + hlen])
    sizes = header["sizes"]
    offsets = [4 + hlen]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    if offsets[-1] != len(data):
        raise ValueError("message length does not match its header")

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if "__nd__" in v:
                i = int(v["__nd__"])
                if v["dtype"] not in _ALLOWED:
                    raise ValueError(f"array dtype {v['dtype']!r} not allowed")
                a = np.frombuffer(data[offsets[i]:offsets[i + 1]], dtype=np.dtype(v["dtype"]))
                return a.reshape(v["shape"]).copy()
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(header["m"])


MAX_MESSAGE = 256 * 1024 * 1024


def send_msg(sock: socket.socket, msg: dict[str, Any]) -> int:
    """Send one message with an 8-byte length prefix; return the bytes sent."""
    data = encode(msg)
    sock.sendall(struct.pack(">Q", len(data)) + data)
    return len(data) + 8


def recv_msg(sock: socket.socket) -> dict[str, Any]:
    """Receive one length-prefixed message (ConnectionError when the peer closed)."""
    (size,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds the limit")
    return decode(_recv_exact(sock, size))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


class SocketTransport:
    """`Transport` over a connected stream socket: one request/reply per round trip."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.round_trips = 0
        self.bytes_sent = 0

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.round_trips += 1
        self.bytes_sent += send_msg(self.sock, msg)
        return recv_msg(self.sock)
