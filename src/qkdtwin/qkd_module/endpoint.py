"""Request/reply in both directions over one framed connection.

Each side may send requests (`rid`) and gets replies matched by `re`; incoming requests go
to a handler that runs in the reader thread (handlers are short). Any I/O error closes the
endpoint and fails every waiting request, so the session above can be rebuilt.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from qkdtwin.qkd_module.framing import FramedSocket, FrameError

log = logging.getLogger("qkdtwin.qkd_module.endpoint")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class PeerGone(ConnectionError):
    """The peer connection closed (or was closed) while a request was outstanding."""


class RemoteError(RuntimeError):
    """The peer answered a request with an error message."""


class Endpoint:
    def __init__(self, fs: FramedSocket, handler: Handler, name: str) -> None:
        self.fs = fs
        self.handler = handler
        self.name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"rx-{name}")

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    def request(self, msg: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        if self.closed.is_set():
            raise PeerGone(self.error or "connection closed")
        rid = next(self._ids)
        ev = threading.Event()
        box: list = [ev]
        with self._lock:
            self._waiting[rid] = box
        try:
            try:
                self.fs.send({**msg, "rid": rid})
            except OSError as exc:
                self.close(f"send failed: {exc}")
                raise PeerGone(self.error) from None
            if not ev.wait(timeout):
                raise PeerGone(f"no answer to {msg.get('type')} within {timeout:.0f} s")
            if len(box) < 2:
                raise PeerGone(self.error or "connection closed")
            reply = box[1]
            if reply.get("type") == "error":
                raise RemoteError(str(reply.get("message", "peer error")))
            return reply
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def _read(self) -> None:
        try:
            while not self.closed.is_set():
                msg = self.fs.recv()
                if "re" in msg:
                    with self._lock:
                        box = self._waiting.get(int(msg["re"]))
                    if box is not None:
                        box.append(msg)
                        box[0].set()
                    continue
                rid = msg.get("rid")
                try:
                    out = self.handler(msg)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    log.warning("%s: bad request %s: %s", self.name, msg.get("type"), exc)
                    out = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
                if rid is not None:
                    self.fs.send({**out, "re": rid})
        except (FrameError, OSError) as exc:
            self.close(str(exc))
        except Exception as exc:  # never leave waiters hanging on a bug
            log.exception("%s: reader failed", self.name)
            self.close(f"reader failed: {exc}")

    def close(self, why: str = "closed") -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.error = why
            self.closed.set()
            boxes = list(self._waiting.values())
        self.fs.close()
        for box in boxes:
            box[0].set()
