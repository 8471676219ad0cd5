"""The Key Manager's store on a real KM process: owner-only files (issue 13, M7) and a key
handed out is on disk before the application hears of it (L2).

A host crash (power cut, kernel panic) keeps only what was synced. If a delivery were not
synced before the answer left the process, a crash could roll it back and the same key be
handed out again; if a consumed link key were not, it could pad a second relay. The test
traces a real KM process with strace while an application asks for keys over ETSI 014 and
checks that, in every request, the KM synced its WAL (``fdatasync``/``fsync`` of
``km.sqlite-wal``) before it wrote the answer to the application's TLS connection.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.km_cluster import km_lab
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace"),
]

USERS = {"sae-d0": {"user": "dora", "km": "km0"}, "sae-d1": {"user": "dora", "km": "km1"}}
LINKS = [("km0", "km1")]
REQUESTS = 12
# strace -ttt -f -yy: "<tid> <epoch.us> <syscall>(<fd><path or socket>...".
LINE = re.compile(r"^\s*\d+\s+(\d+\.\d+)\s+(\w+)\((\d+)<(TCP:\[[^\]]*\]|[^>]*)>")


def _trace(pid: int, out: Path) -> subprocess.Popen:
    err = out.with_suffix(".err")
    with err.open("w") as fh:
        p = subprocess.Popen(
            ["strace", "-f", "-ttt", "-yy", "-o", str(out), "-p", str(pid),
             "-e", "trace=fsync,fdatasync,write,sendto,sendmsg"], stderr=fh)
    # strace says "Process N attached" for each thread it holds (all of them, with -f)
    wait_for(lambda: "attached" in err.read_text() or p.poll() is not None,
             timeout=10, what="strace to attach")
    time.sleep(0.5)
    assert p.poll() is None, err.read_text()
    return p


def _events(trace: Path, km_port: int) -> list[tuple[float, str]]:
    """(time, "sync") for a sync of the WAL, (time, "answer") for a write to a client of the
    KM's ETSI port."""
    events = []
    for line in trace.read_text().splitlines():
        m = LINE.match(line)
        if not m:
            continue
        ts, call, _fd, target = float(m[1]), m[2], m[3], m[4]
        if call in ("fsync", "fdatasync") and target.endswith("km.sqlite-wal"):
            events.append((ts, "sync"))
        elif call in ("write", "sendto", "sendmsg") and f"127.0.0.1:{km_port}->" in target:
            events.append((ts, "answer"))
    return events


def test_delivered_keys_are_synced_before_the_answer(tmp_path, test_ca):
    with km_lab(tmp_path, test_ca, USERS, LINKS) as lab:
        cluster, sae = lab["cluster"], lab["saes"]["sae-d0"]
        url = f"{cluster.url('km0')}/api/v1/keys/sae-d1/enc_keys?number=1&size=256"
        assert sae.get(url, timeout=10).status_code == 200  # session set up, connection open
        out = tmp_path / "km0.strace"
        tracer = _trace(cluster.procs["km0"].pid, out)
        windows = []
        try:
            for _ in range(REQUESTS):
                t0 = time.time()
                r = sae.get(url, timeout=30)
                windows.append((t0, time.time()))
                assert r.status_code == 200, r.text
                time.sleep(0.2)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        events = _events(out, cluster.ports["km0"])
    unsynced = []
    for t0, t1 in windows:
        inside = [(ts, kind) for ts, kind in events if t0 <= ts <= t1]
        answers = [ts for ts, kind in inside if kind == "answer"]
        assert answers, f"no answer traced in request window {t0}..{t1}"
        if not any(kind == "sync" and ts < answers[-1] for ts, kind in inside):
            unsynced.append(round(t1 - t0, 3))
    assert not unsynced, (f"{len(unsynced)} of {REQUESTS} deliveries answered before the KM "
                          f"synced its WAL (request durations {unsynced})")


def test_key_store_is_owner_only(tmp_path, test_ca):
    """km.sqlite, its -wal and -shm (which hold recent pages, keys included, in clear) are
    0600 in a 0700 directory, whatever the umask of whoever started the KM."""
    import os
    import stat

    old = os.umask(0o022)  # a usual login umask: files 0644, directories 0755 by default
    try:
        with km_lab(tmp_path, test_ca, USERS, LINKS) as lab:
            d = lab["cluster"].dir / "km0"
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()
                     if p.name.startswith("km.sqlite")}
            dir_mode = stat.S_IMODE(d.stat().st_mode)
    finally:
        os.umask(old)
    assert {"km.sqlite", "km.sqlite-wal", "km.sqlite-shm"} <= set(modes), modes
    assert {n: oct(m) for n, m in modes.items() if m != 0o600} == {}
    assert oct(dir_mode) == oct(0o700)
