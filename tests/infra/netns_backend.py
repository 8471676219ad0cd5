"""A testinfra backend that runs commands inside a lab node with `ip netns exec`.

testinfra's generic `ansible` backend starts one `ansible` process per command (about a
second each); this one costs one `ip netns exec` (milliseconds). The node's /etc overlay
(`/etc/netns/<ns>/`) applies, so `host.file("/etc/qkdtwin/...")` sees the node's files.

    host = testinfra.get_host("netns://clab-line3-km0")
"""

from __future__ import annotations

from typing import Any

import testinfra.backend
from testinfra.backend import base


class NetnsBackend(base.BaseBackend):
    NAME = "netns"

    def __init__(self, hostname: str, *args: Any, **kwargs: Any) -> None:
        self.namespace = hostname
        super().__init__(hostname, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        out = self.run_local("ip netns exec %s /bin/sh -c %s", self.namespace, cmd)
        out.command = self.encode(cmd)
        return out


def register() -> None:
    """Make `netns://<namespace>` host specs resolve to this backend."""
    testinfra.backend.BACKENDS[NetnsBackend.NAME] = f"{__name__}.NetnsBackend"
