# Copyright: qkdtwin contributors
# Apache-2.0
# ruff: noqa: E402  (Ansible plugins put DOCUMENTATION before the imports)
"""Ansible connection plugin: run tasks inside a Linux network namespace (ip netns exec)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a Linux network namespace with ip netns exec
description:
  - Runs commands of a node of a qkdtwin lab (netns runtime) inside its network namespace
    with C(ip netns exec <namespace> /bin/sh -c <command>), so no SSH is needed.
  - Files are copied through C(ip netns exec) as well, so the per-namespace C(/etc/netns/<ns>/)
    overlays apply; writing C(/etc/qkdtwin/x) from a task lands in
    C(/etc/netns/<ns>/qkdtwin/x) on the host.
  - The controller must run as root (creating and entering namespaces needs CAP_SYS_ADMIN).
author: qkdtwin contributors
version_added: "1.0.0"
options:
  netns:
    description:
      - Name of the network namespace, for example C(clab-star6-km0).
      - Defaults to the host's address (the inventory host name when C(ansible_host) is unset).
    type: str
    vars:
      - name: ansible_host
      - name: qkdtwin_netns
  ip_executable:
    description:
      - Path of the C(ip) command (iproute2).
    type: str
    default: ip
    vars:
      - name: qkdtwin_ip_executable
extends_documentation_fragment:
  - connection_pipelining
notes:
  - The remote user is ignored; commands run as the user running Ansible (root).
  - Namespaces do not isolate the file system; only C(/etc) is overlaid by C(ip netns exec).
"""

import os
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

_BUFSIZE = 65536


class Connection(ConnectionBase):
    """Connection into a network namespace of the local host."""

    transport = "netns"
    has_pipelining = True
    # Modules and temp files live on the host's file system, which the namespace shares.
    has_tty = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.netns = None
        self.ip = None
        self.default_user = "root"

    def _connect(self):
        if self._connected:
            return self
        self.netns = self.get_option("netns") or self._play_context.remote_addr
        if not self.netns:
            raise AnsibleConnectionFailure("netns connection: no namespace name "
                                           "(set qkdtwin_netns or ansible_host)")
        ip_cmd = self.get_option("ip_executable") or "ip"
        self.ip = shutil.which(ip_cmd) or shutil.which(ip_cmd, path="/usr/sbin:/sbin:/usr/bin")
        if not self.ip:
            raise AnsibleConnectionFailure(f"netns connection: {ip_cmd!r} (iproute2) not found")
        if not os.path.exists(os.path.join("/run/netns", self.netns)):
            raise AnsibleConnectionFailure(
                f"netns connection: namespace {self.netns!r} does not exist "
                f"(is the lab up? run `qkdtwin up`)")
        display.vvv(f"ESTABLISH NETNS CONNECTION INTO {self.netns}", host=self.netns)
        self._connected = True
        return self

    def _argv(self, *command):
        return [self.ip, "netns", "exec", self.netns, *command]

    def exec_command(self, cmd, in_data=None, sudoable=True):
        """Run `cmd` with /bin/sh inside the namespace; `in_data` goes to its stdin."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = self._argv("/bin/sh", "-c", to_text(cmd))
        display.vvv(f"EXEC {argv}", host=self.netns)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as exc:
            raise AnsibleConnectionFailure(f"netns connection: cannot run ip: {exc}") from exc
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        """Copy a controller file into the node, through the namespace's /etc overlay."""
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self.netns)
        b_in = to_bytes(in_path, errors="surrogate_or_strict")
        if not os.path.exists(b_in):
            raise AnsibleFileNotFound(f"file or module does not exist: {to_native(in_path)}")
        argv = self._argv("/bin/sh", "-c", 'cat > "$1"', "sh", to_text(out_path))
        with open(b_in, "rb") as src:
            proc = subprocess.Popen(argv, stdin=src, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError(f"netns connection: failed to transfer {in_path} to "
                               f"{self.netns}:{out_path}: {to_text(stderr).strip()}")

    def fetch_file(self, in_path, out_path):
        """Copy a file of the node to the controller."""
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self.netns)
        argv = self._argv("cat", "--", to_text(in_path))
        b_out = to_bytes(out_path, errors="surrogate_or_strict")
        with open(b_out, "wb") as dst:
            proc = subprocess.Popen(argv, stdout=dst, stderr=subprocess.PIPE,
                                    bufsize=_BUFSIZE)
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError(f"netns connection: failed to fetch {self.netns}:{in_path}: "
                               f"{to_text(stderr).strip()}")

    def reset(self):
        pass

    def close(self):
        self._connected = False
