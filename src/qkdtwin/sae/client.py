"""A client for the Key Manager's application APIs over mutual TLS.

ETSI GS QKD 014: :meth:`SaeClient.status`, :meth:`SaeClient.enc_keys` (get key),
:meth:`SaeClient.dec_keys` (get key with key IDs). ETSI GS QKD 004 primitives (HTTPS/JSON, see
docs/api.md): :meth:`SaeClient.open_connect`, :meth:`SaeClient.get_key`,
:meth:`SaeClient.close`.

Every call returns a :class:`KmResponse` with the HTTP code and the KM's JSON body, also for
refusals (4xx/5xx bodies carry ``message``, ETSI 004 bodies also ``status``): an application
must see why it was refused. Only a KM that cannot be reached or does not answer JSON raises
:class:`SaeError`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from qkdtwin.errors import UserError

API_014 = "/api/v1/keys"
API_004 = "/api/v1/qkd004"


class SaeError(UserError):
    """The KM could not be reached, or its answer was not an API answer."""


@dataclass
class KmResponse:
    """One answer of the KM: HTTP code, JSON body and how long the call took."""

    http: int
    body: dict[str, Any]
    seconds: float
    url: str = ""

    @property
    def ok(self) -> bool:
        """2xx, and for ETSI 004 a status of 0 (success) or 1 (peer not connected yet)."""
        if not 200 <= self.http < 300:
            return False
        status = self.body.get("status")
        return status is None or status in (0, 1)

    @property
    def status(self) -> int | None:
        """The ETSI 004 ``status`` of the body (None for ETSI 014)."""
        s = self.body.get("status")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))

    def keys(self) -> list[dict[str, str]]:
        """ETSI 014 ``keys`` (each ``key_ID`` and base64 ``key``)."""
        keys = self.body.get("keys")
        return keys if isinstance(keys, list) else []

    def as_dict(self) -> dict[str, Any]:
        return {"http": self.http, "seconds": round(self.seconds, 4), **self.body}


def key_bytes(b64: str) -> bytes:
    """The raw bytes of a base64 key as the KMs hand them out."""
    return base64.b64decode(b64)


@dataclass
class SaeClient:
    """One application's connection to its KM (keep-alive HTTPS with its client certificate).

    ``base_url`` like ``https://172.31.6.22:8443``; ``cert``/``key`` the SAE's certificate
    (CN = SAE ID) and private key; ``ca`` the lab CA that signed the KM's certificate.
    """

    base_url: str
    cert: str | Path
    key: str | Path
    ca: str | Path
    timeout: float = 30.0
    sae_id: str | None = None
    _session: requests.Session = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.startswith(("https://", "http://")):
            raise SaeError(f"KM URL {self.base_url!r} must start with https://")
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not Path(path).is_file():
                raise SaeError(f"{what} file {path} not found")
        s = requests.Session()
        s.cert = (str(self.cert), str(self.key))
        s.verify = str(self.ca)
        s.trust_env = False  # never send lab traffic through a host proxy
        self._session = s

    def close_connection(self) -> None:
        self._session.close()

    def __enter__(self) -> SaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_connection()

    # -- transport --

    def _call(self, method: str, path: str, *, params: Any = None,
              json: dict[str, Any] | None = None) -> KmResponse:
        url = self.base_url + path
        start = time.monotonic()
        try:
            r = self._session.request(method, url, params=params, json=json,
                                      timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise SaeError(f"TLS with the KM at {self.base_url} failed (wrong CA, or a "
                           f"certificate the KM does not accept): {_short(exc)}") from None
        except requests.exceptions.Timeout:
            raise SaeError(f"the KM at {self.base_url} did not answer within "
                           f"{self.timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise SaeError(f"cannot reach the KM at {self.base_url}: {_short(exc)}") from None
        seconds = time.monotonic() - start
        try:
            body = r.json()
        except ValueError:
            raise SaeError(f"the KM at {url} answered HTTP {r.status_code} without JSON: "
                           f"{r.text[:200]!r}") from None
        if not isinstance(body, dict):
            raise SaeError(f"the KM at {url} answered a JSON {type(body).__name__}, "
                           "not an object")
        return KmResponse(r.status_code, body, seconds, url)

    # -- ETSI GS QKD 014 --

    def status(self, slave: str) -> KmResponse:
        """``GET /api/v1/keys/{slave}/status``."""
        return self._call("GET", f"{API_014}/{slave}/status")

    def enc_keys(self, slave: str, number: int = 1, size: int | None = None,
                 priority: int | None = None) -> KmResponse:
        """``POST /api/v1/keys/{slave}/enc_keys`` (``priority``: qkdtwin extension 0–9)."""
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        if priority is not None:
            body["extension_optional"] = [{"qkdtwin_priority": priority}]
        return self._call("POST", f"{API_014}/{slave}/enc_keys", json=body)

    def dec_keys(self, master: str, key_ids: list[str]) -> KmResponse:
        """``POST /api/v1/keys/{master}/dec_keys`` with ``key_IDs``."""
        if not key_ids:
            raise SaeError("give at least one key ID")
        return self._call("POST", f"{API_014}/{master}/dec_keys",
                          json={"key_IDs": [{"key_ID": k} for k in key_ids]})

    # -- ETSI GS QKD 004 --

    def open_connect(self, source: str, destination: str, qos: dict[str, Any] | None = None,
                     key_stream_id: str | None = None) -> KmResponse:
        """``OPEN_CONNECT``: status 0 = both ends connected, 1 = waiting for the peer."""
        body: dict[str, Any] = {"source": source, "destination": destination,
                                "qos": dict(qos or {})}
        if key_stream_id:
            body["key_stream_id"] = key_stream_id
        return self._call("POST", f"{API_004}/open_connect", json=body)

    def get_key(self, key_stream_id: str, index: int | None = None,
                metadata_size: int | None = None) -> KmResponse:
        """``GET_KEY``: the next key of the stream, or the one at ``index``."""
        body: dict[str, Any] = {"key_stream_id": key_stream_id}
        if index is not None:
            body["index"] = index
        if metadata_size is not None:
            body["metadata"] = {"size": metadata_size}
        return self._call("POST", f"{API_004}/get_key", json=body)

    def close(self, key_stream_id: str) -> KmResponse:
        """``CLOSE`` the stream."""
        return self._call("POST", f"{API_004}/close", json={"key_stream_id": key_stream_id})

    def wait_key(self, key_stream_id: str, index: int | None = None,
                 timeout: float = 30.0, interval: float = 0.1) -> KmResponse:
        """``GET_KEY`` until a key comes or a final answer: status 2 (not enough key yet),
        3 (peer application not connected yet) and 9 (token bucket empty, qkdtwin) are
        retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.get_key(key_stream_id, index)
            left = deadline - time.monotonic()
            if r.status not in (2, 3, 9) or left <= 0:
                return r
            wait = r.body.get("retry_after_s") if r.status == 9 else None
            pause = float(wait) if isinstance(wait, int | float) and wait > 0 else interval
            time.sleep(min(pause, left))


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, on one line."""
    text = str(exc)
    for marker in ("Caused by ", "Errno"):
        if marker in text:
            text = text[text.index(marker):]
    return text.replace("\n", " ")[:240]
