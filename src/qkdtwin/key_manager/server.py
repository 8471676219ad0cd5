"""Production HTTPS server of the Key Manager: cheroot (threaded WSGI) with its builtin SSL
adapter, mutual TLS against the lab CA.

Client certificates are *optional* at the TLS layer so that a caller without one gets a JSON
401 instead of a bare handshake failure; a certificate that does not verify against the lab CA
still fails the handshake (Python's ssl cannot accept it for inspection). cheroot puts the
verified certificate into the WSGI environ (``SSL_CLIENT_VERIFY``, ``SSL_CLIENT_CERT``,
``SSL_CLIENT_S_DN_*``), from which the application takes the caller's identity.
"""

from __future__ import annotations

import ssl
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from qkdtwin.key_manager.config import KmConfig


def make_server(cfg: KmConfig, app: Any) -> wsgi.Server:
    server = wsgi.Server((cfg.host, cfg.port), app, numthreads=cfg.threads,
                         server_name=f"qkdtwin-km-{cfg.node}", timeout=30)
    adapter = BuiltinSSLAdapter(cfg.cert, cfg.key, certificate_chain=cfg.ca)
    adapter.context.verify_mode = ssl.CERT_OPTIONAL
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl_adapter = adapter
    return server
