"""`clab-<lab>/runtime.json`: what `up` created, so `down` also removes nodes that were later
deleted from the topology."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qkdtwin.topology import Lab

STATE_NAME = "runtime.json"


def state_path(lab: Lab) -> Path:
    return lab.lab_dir / STATE_NAME


def load_state(lab: Lab) -> dict[str, Any]:
    try:
        data = json.loads(state_path(lab).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def save_state(lab: Lab, state: dict[str, Any]) -> None:
    lab.lab_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_path(lab).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(state_path(lab))
