"""A loopback Mosquitto configured like a deployed lab's broker: the ACL rendered by Ansible's
templating from role mqtt_broker's template and defaults with the lab's inventory variables,
and the username option (CN or whole subject) of the role's mosquitto.conf template. Tests of
broker access control then run against the real rules without deploying a lab."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from qkdtwin.testbed.broker import TestBroker
from qkdtwin.testbed.pki import TestCA

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "mqtt_broker"


def role_acl(lab_file: Path) -> str:
    """The ACL file role mqtt_broker writes for the lab ``lab_file``."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    from qkdtwin.runtime.inventory import build_inventory
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab

    lab = load_lab(lab_file)
    variables = dict(build_inventory(lab, get_runtime("netns"))["all"]["vars"])
    variables.update(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(trust_as_template((ROLE / "templates" / "acl.j2").read_text()))


def role_username_option() -> str:
    """``identity`` or ``subject``: what the role's broker takes as the MQTT username."""
    text = (ROLE / "templates" / "mosquitto.conf.j2").read_text()
    found = re.findall(r"^use_(identity|subject)_as_username true$", text, re.MULTILINE)
    assert len(found) == 1, "mosquitto.conf.j2 sets no username option"
    return found[0]


def lab_broker(directory: Path, ca: TestCA, lab_file: Path) -> TestBroker:
    return TestBroker(directory, ca, acl=role_acl(lab_file), username=role_username_option())
