#!/usr/bin/python
# Copyright: qkdtwin contributors
# Apache-2.0
# ruff: noqa: E402  (Ansible modules put DOCUMENTATION before the imports)
"""Ansible module: make a set of directories and small files exist with the given content
and mode, in one module run (one process on the node instead of one per file)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: qkdtwin_files
short_description: Ensure several directories and small files in one module run
description:
  - Creates the listed directories (with parents) and writes the listed files atomically
    when their content differs; fixes modes that differ.
  - One module run for a whole role's files keeps a lab rollout fast (each module run costs
    a process on the node and a worker on the controller).
  - Content is given inline (rendered on the controller, e.g. with the C(template) lookup),
    so it suits configuration files, certificates and keys, not large files. Set C(no_log)
    on tasks that install keys.
options:
  directories:
    description: Directories to create, as C({path, mode}).
    type: list
    elements: dict
    default: []
  files:
    description:
      - Files to write, as C({path, content, mode}). C(content) is text; a missing
        parent directory is created with mode 0755.
    type: list
    elements: dict
    default: []
author: qkdtwin contributors
"""

EXAMPLES = r"""
- name: Install the node's files
  qkdtwin_files:
    directories:
      - {path: /etc/qkdtwin/supervisord.d, mode: "0755"}
    files:
      - path: /etc/qkdtwin/supervisord.conf
        content: "{{ lookup('ansible.builtin.template', 'supervisord.conf.j2') }}"
        mode: "0644"
"""

RETURN = r"""
changed_paths:
  description: Paths that were created or changed (content or mode).
  returned: always
  type: list
  elements: str
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _mode(value, path):
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 8)
    except ValueError:
        raise ValueError(f"{path}: mode {value!r} is not an octal number") from None


def _ensure_dir(path, mode, check):
    if os.path.isdir(path):
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            if not check:
                os.chmod(path, mode)
            return True
        return False
    if os.path.exists(path):
        raise ValueError(f"{path} exists and is not a directory")
    if not check:
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, mode)
    return True


def _ensure_file(path, content, mode, check):
    data = content.encode("utf-8")
    try:
        with open(path, "rb") as fh:
            same = fh.read() == data
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        same, current = False, None
    if same:
        if current != mode:
            if not check:
                os.chmod(path, mode)
            return True
        return False
    if check:
        return True
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    # Write beside the target and rename: readers never see a half-written file, and the
    # file has its final mode before it holds the content (keys).
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".qkdtwin-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    changed = []
    try:
        for item in module.params["directories"]:
            path = item["path"]
            if _ensure_dir(path, _mode(item.get("mode", "0755"), path), module.check_mode):
                changed.append(path)
        for item in module.params["files"]:
            path = item["path"]
            mode = _mode(item.get("mode", "0644"), path)
            if _ensure_file(path, str(item.get("content", "")), mode, module.check_mode):
                changed.append(path)
    except (KeyError, ValueError, OSError) as exc:
        module.fail_json(msg=f"qkdtwin_files: {exc}", changed_paths=changed,
                         changed=bool(changed))
    module.exit_json(changed=bool(changed), changed_paths=changed)


if __name__ == "__main__":
    main()
