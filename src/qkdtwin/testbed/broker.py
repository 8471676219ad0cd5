"""A real Mosquitto broker on loopback for tests of single services (TLS, client
certificates, identity as username, an ACL file chosen by the test)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from qkdtwin.testbed.pki import TestCA

ALLOW_ALL_ACL = "pattern readwrite qkd/v1/#\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestBroker:
    __test__ = False

    def __init__(self, directory: Path, ca: TestCA, acl: str = ALLOW_ALL_ACL,
                 username: str = "identity") -> None:
        """``username``: ``identity`` (the certificate's CN) or ``subject`` (its whole
        subject, RFC 2253 ``CN=..,OU=..``, as the lab's broker: role mqtt_broker)."""
        if username not in ("identity", "subject"):
            raise ValueError(f"username: identity or subject, not {username!r}")
        if not shutil.which("mosquitto"):
            raise RuntimeError("mosquitto is not installed (make deps installs it)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        server = ca.issue("broker", sans=("localhost", "127.0.0.1"))
        (self.dir / "acl").write_text(acl)
        (self.dir / "mosquitto.conf").write_text(
            f"per_listener_settings false\n"
            f"user root\n"  # the test dirs are private to root
            f"set_tcp_nodelay true\n"

            f"persistence false\n"
            f"log_dest stdout\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {ca.ca}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            f"require_certificate true\nuse_{username}_as_username true\n"
            f"tls_version tlsv1.2\n"
            f"acl_file {self.dir / 'acl'}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> TestBroker:
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()
