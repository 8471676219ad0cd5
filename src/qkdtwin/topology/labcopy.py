"""Renamed copies of a lab, so tests and benchmarks never touch a lab deployed from labs/,
and a host-wide lock per lab name for whoever deploys one."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml


def copy_lab(src: Path, dest_dir: Path, name: str, octet: int) -> Path:
    """A renamed copy of a lab (and its users file) with the mgmt subnet 172.31.<octet>.0/24."""
    text = src.read_text()
    old = yaml.safe_load(text)
    old_prefix = old["mgmt"]["ipv4-subnet"].rsplit(".", 1)[0] + "."
    text = text.replace(f"name: {old['name']}", f"name: {name}", 1)
    text = text.replace(old_prefix, f"172.31.{octet}.")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.clab.yml"
    dest.write_text(text)
    users = src.with_name(src.name.replace(".clab.yml", ".users.yml"))
    if users.exists():
        shutil.copy(users, dest_dir / f"{name}.users.yml")
    return dest


@contextlib.contextmanager
def lab_lock(name: str, timeout: float = 1800.0) -> Iterator[None]:
    """Hold a host-wide lock for a lab name while using it.

    Lab names (and so namespaces) are fixed per test, so two test sessions or benchmarks
    running at the same time on one host would tear down each other's lab; the second one
    waits here instead.
    """
    path = Path(tempfile.gettempdir()) / f"qkdtwin-lab-{name}.lock"
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"lab {name} is in use by another session ({path})") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
