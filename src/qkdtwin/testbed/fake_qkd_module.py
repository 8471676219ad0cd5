"""A stand-in QKD module for Key Manager tests: the ETSI 014 interface a KM pulls link key
from (the real emulated module is issue 3's). Two instances built with the same ``seed``
(one ``master``, one slave) hand out the same keys under the same IDs: the master invents
IDs with ``enc_keys``, the slave derives the same key for an ID with ``dec_keys`` and hands
each ID out once. ``rate_keys_per_s`` limits how fast the master produces (scarce key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeQkdModule:
    __test__ = False

    def __init__(self, seed: bytes, master: bool, rate_keys_per_s: float | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.seed = seed
        self.master = master
        self.rate = rate_keys_per_s
        self._budget = 0.0
        self._t = time.monotonic()
        self._counter = 0
        self._served: set[str] = set()
        self._lock = threading.Lock()
        self.requests = 0
        self.paused = False  # a test may stop key production (enc_keys answers 503)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    return self._answer(400, {"message": "malformed JSON"})
                code, out = outer.handle(self.path, body)
                self._answer(code, out)

            def log_message(self, *a: Any) -> None:
                pass

        ThreadingHTTPServer.request_queue_size = 128  # many KM threads may connect at once
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"

    def start(self) -> FakeQkdModule:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def key_for(self, key_id: str, size: int) -> bytes:
        out = b""
        i = 0
        while len(out) < size // 8:
            out += hmac.new(self.seed, f"{key_id}|{i}".encode(), hashlib.sha256).digest()
            i += 1
        return out[: size // 8]

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v1", "keys"]:
            return 404, {"message": "not found"}
        op = parts[4]
        if op == "enc_keys" and self.master and self.paused:
            return 503, {"message": "not enough key in the module (paused)"}
        if op == "enc_keys" and self.master:
            number, size = int(body.get("number", 1)), int(body.get("size", 256))
            with self._lock:
                if self.rate is not None:
                    now = time.monotonic()
                    self._budget = min(self._budget + (now - self._t) * self.rate,
                                       max(self.rate, 1.0))
                    self._t = now
                    number = min(number, int(self._budget))
                    self._budget -= number
                if number < 1:
                    return 503, {"message": "not enough key in the module"}
                ids = []
                for _ in range(number):
                    ids.append(str(uuid.UUID(bytes=hmac.new(
                        self.seed, f"id|{self._counter}".encode(), hashlib.sha256).digest()[:16])))
                    self._counter += 1
            return 200, {"keys": [{"key_ID": k, "key": base64.b64encode(
                self.key_for(k, size)).decode()} for k in ids]}
        if op == "dec_keys" and not self.master:
            ids = [k["key_ID"] for k in body.get("key_IDs", [])]
            with self._lock:
                if any(k in self._served for k in ids):
                    return 400, {"message": "one or more keys specified are not found on KME"}
                self._served.update(ids)
            return 200, {"keys": [{"key_ID": k, "key": base64.b64encode(
                self.key_for(k, 256)).decode()} for k in ids]}
        return 400, {"message": f"{op} not offered by this side"}


def module_pair(link: str, rate_keys_per_s: float | None = None
                ) -> tuple[FakeQkdModule, FakeQkdModule]:
    """(a-side master, b-side slave) sharing a seed derived from the link name."""
    seed = hashlib.sha256(f"fake-qkd|{link}|{uuid.uuid4()}".encode()).digest()
    return (FakeQkdModule(seed, True, rate_keys_per_s).start(),
            FakeQkdModule(seed, False).start())
