"""HTTP clients of a KM: peer KMs (HTTPS, mutual TLS with the node certificate, keep-alive)
and its QKD modules (ETSI 014, loopback HTTP or HTTPS)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter


class PeerError(Exception):
    """A peer or module did not answer, or answered with an error."""

    def __init__(self, message: str, status: int | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class HttpClient:
    def __init__(self, ca: str | None, cert: str | None, key: str | None,
                 pool: int = 16) -> None:
        s = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        if cert and key:
            s.cert = (cert, key)
        s.verify = ca or True
        s.trust_env = False  # no proxies from the environment inside lab nodes
        self._s = s

    def post(self, url: str, body: dict[str, Any], timeout: float = 5.0,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
        return self._call("POST", url, json=body, timeout=timeout, headers=headers)

    def put(self, url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self._call("PUT", url, json=body, timeout=timeout)

    def _call(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        try:
            r = self._s.request(method, url, **kw)
        except requests.RequestException as exc:
            raise PeerError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None
        try:
            data = r.json() if r.content else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {"data": data}
        if r.status_code >= 300:
            raise PeerError(f"{method} {url}: HTTP {r.status_code}: {data.get('message', '')}",
                            r.status_code, data)
        return data

    def close(self) -> None:
        self._s.close()
