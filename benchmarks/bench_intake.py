"""HTTPS intake under slow clients (finding H1), on loopback: a WSGI app behind a server stack,
200 idle TCP connections, 50 slow-loris and 50 stuck TLS handshakes held by
tests/support/slow_clients.py (one asyncio process), and a legitimate mTLS client measuring
its request latency (a new connection every 10th request).

    .venv/bin/python benchmarks/bench_intake.py [--stack gated|cheroot] [--requests 200]

Stacks: ``gated`` (qkdtwin.httpserver, what the KM and the SDN controller run), ``cheroot``
(cheroot's own intake, the servers before H1) and ``gunicorn`` (gthread worker, 16 threads;
not a dependency: ``pip install gunicorn`` to compare). ``identity_missing`` counts answers
in which the application did not see the client certificate's CN.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from qkdtwin.httpserver import make_tls_server  # noqa: E402
from qkdtwin.testbed.pki import TestCA  # noqa: E402


def app(environ, start_response):
    body = json.dumps({"cn": environ.get("SSL_CLIENT_S_DN_CN")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def cheroot_server(port: int, ca: str, node):
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    server = wsgi.Server(("127.0.0.1", port), app, numthreads=16, timeout=30)
    adapter = BuiltinSSLAdapter(node.cert, node.key, certificate_chain=ca)
    adapter.context.verify_mode = ssl.CERT_OPTIONAL
    server.ssl_adapter = adapter
    return server


def serve(stack: str, port: int, ca: str, node) -> None:
    """The server under test, in its own process (its own GIL, as a KM has)."""
    if stack == "gated":
        server = make_tls_server(("127.0.0.1", port), app, cert=node.cert, key=node.key,
                                 ca=ca, threads=16, name="bench", require_cert=False)
    else:
        server = cheroot_server(port, ca, node)
    server.prepare()
    server.serve()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack", choices=("gated", "cheroot", "gunicorn"), default="gated")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--attack", type=int, default=1, help="0: no attack (the baseline)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    ca = TestCA(tmp)
    node = ca.issue("km9", ou="node")
    sae = ca.issue("sae-x", ou="sae", o="alice")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if args.stack == "gunicorn":  # not a dependency: `pip install gunicorn` to compare
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-k", "gthread", "-w", "1",
             "--threads", "16", "--timeout", "30", "-b", f"127.0.0.1:{port}",
             "--certfile", node.cert, "--keyfile", node.key, "--ca-certs", ca.ca,
             "--cert-reqs", "1", "--chdir", str(ROOT / "benchmarks"), "bench_intake:app"],
            stderr=subprocess.DEVNULL)
    else:
        server = mp.Process(target=serve, args=(args.stack, port, ca.ca, node), daemon=True)
        server.start()
    time.sleep(2.0)  # the server process binds
    attacker = None
    if args.attack:
        attacker = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/support/slow_clients.py"), "127.0.0.1",
             str(port), "--idle", "200", "--loris", "50", "--stuck", "50", "--seconds", "60"],
            stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        ready = threading.Event()
        threading.Thread(target=lambda: "ready" in attacker.stdout.readline() and ready.set(),
                         daemon=True).start()
        ready.wait(20)  # a server that cannot take the attack never lets it get ready
        print(f"attack: {'ready' if ready.is_set() else 'NOT ready'} after "
              f"{time.monotonic() - t0:.1f} s", flush=True)
    lat, errors, identity_lost = [], 0, 0
    s = requests.Session()
    s.cert, s.verify, s.trust_env = (sae.cert, sae.key), ca.ca, False
    url = f"https://127.0.0.1:{port}/"
    for i in range(args.requests):
        if i % 10 == 0:
            s.close()
        t = time.perf_counter()
        try:
            cn = s.get(url, timeout=5).json()["cn"]
            identity_lost += cn != "sae-x"
        except (requests.RequestException, AssertionError, ValueError) as exc:
            if not errors:
                print(f"first error: {exc!r}", flush=True)
            errors += 1
        lat.append(time.perf_counter() - t)
        time.sleep(0.02)
    lat.sort()
    pct = {q: lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1000 for q in (50, 90, 99)}
    print(json.dumps({"stack": args.stack, "attack": bool(args.attack), "requests": len(lat),
                      "errors": errors,
                      "identity_missing": identity_lost,
                      **{f"p{q}_ms": round(v, 1) for q, v in pct.items()},
                      "max_ms": round(lat[-1] * 1000, 1)}), flush=True)
    if attacker:
        attacker.terminate()
        attacker.wait(10)
    server.terminate()


if __name__ == "__main__":
    main()
