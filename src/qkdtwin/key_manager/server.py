"""Production HTTPS server of the Key Manager: :mod:`qkdtwin.httpserver` (cheroot's WSGI
gateway and worker pool behind a non-blocking intake gate), mutual TLS against the lab CA.

Client certificates are *optional* at the TLS layer so that a caller without one gets a JSON
401 instead of a bare handshake failure; a certificate that does not verify against the lab CA
still fails the handshake (Python's ssl cannot accept it for inspection). The verified
certificate is in the WSGI environ (``SSL_CLIENT_VERIFY``, ``SSL_CLIENT_CERT``,
``SSL_CLIENT_S_DN_*``), from which the application takes the caller's identity.

A quarter of the worker threads (at least one) is reserved for peer KMs (certificate OU
``node``), so that relays keep flowing when applications keep every other thread busy.
"""

from __future__ import annotations

from typing import Any

from qkdtwin.httpserver import GatedServer, Limits, make_tls_server
from qkdtwin.key_manager.config import KmConfig

PEER_OUS = ("node",)  # who may use the reserved worker threads: the lab's KMs


def make_server(cfg: KmConfig, app: Any) -> GatedServer:
    limits = Limits(peer_reserve=max(1, cfg.threads // 4), peer_ous=PEER_OUS)
    return make_tls_server((cfg.host, cfg.port), app, cert=cfg.cert, key=cfg.key, ca=cfg.ca,
                           threads=cfg.threads, name=f"qkdtwin-km-{cfg.node}",
                           require_cert=False, limits=limits)
