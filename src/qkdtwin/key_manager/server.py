"""Production HTTPS server of the Key Manager: cheroot (threaded WSGI) with its builtin SSL
adapter, mutual TLS against the lab CA.

Client certificates are *optional* at the TLS layer so that a caller without one gets a JSON
401 instead of a bare handshake failure; a certificate that does not verify against the lab CA
still fails the handshake (Python's ssl cannot accept it for inspection). cheroot puts the
verified certificate into the WSGI environ (``SSL_CLIENT_VERIFY``, ``SSL_CLIENT_CERT``,
``SSL_CLIENT_S_DN_*``), from which the application takes the caller's identity.
"""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from qkdtwin.key_manager.config import KmConfig

log = logging.getLogger("qkdtwin.key_manager.server")


def make_server(cfg: KmConfig, app: Any) -> wsgi.Server:
    server = wsgi.Server((cfg.host, cfg.port), app, numthreads=cfg.threads,
                         server_name=f"qkdtwin-km-{cfg.node}", timeout=30)
    adapter = BuiltinSSLAdapter(cfg.cert, cfg.key, certificate_chain=cfg.ca)
    adapter.context.verify_mode = ssl.CERT_OPTIONAL
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl_adapter = adapter
    server.error_log = _error_log  # JSON lines like the rest of the service
    return server


def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    """cheroot's error log through ``logging``. Clients that drop their connection are one
    line (no stack: they are not errors of the KM)."""
    exc = sys.exc_info()[1] if traceback else None
    if isinstance(exc, OSError):  # includes ssl.SSLError: the peer went away
        log.warning("%s (%s: %s)", msg or "connection error", type(exc).__name__, exc)
    elif exc is not None:
        log.error(msg or "server error", exc_info=True)
    else:
        log.log(level, msg)
