"""Attacks on identity and ownership against real processes (issue 13: H2, M2, M4): the
control elements as processes (`python -m qkdtwin.control.<element>`) on a real Mosquitto,
certificates of a lab CA, and what a stolen or misnamed certificate may still do."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import yaml

from qkdtwin.etsi015 import SDN_BASE as BASE
from tests.support.control import ControlPlane, register_star6, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


def _sdn(plane, ca, cn: str, ou: str, method: str, path: str, **kw) -> requests.Response:
    ident = ca.issue(cn, ou=ou, o="ops" if ou == "sae" else None)
    return requests.request(method, f"{plane.sdn_url}{BASE}{path}", cert=(ident.cert, ident.key),
                            verify=ca.ca, timeout=10, **kw)


def _links(plane, ca) -> dict[str, tuple[str, str]]:
    r = _sdn(plane, ca, "host", "operator", "GET", "")
    assert r.status_code == 200, r.text
    return {lk["qkdl_id"]: (lk["qkdl_type"], lk["qkdl_status"])
            for n in r.json()["qkd_node"] for lk in n["qkd_links"]["qkd_link"]}


@pytest.fixture
def plane(broker, test_ca, tmp_path):
    pl = ControlPlane(broker, test_ca, tmp_path, USERS)
    register_star6(pl.sdn_url, test_ca)
    wait_for(lambda: pl.health("routing")["links"] == 6, timeout=15)
    yield pl
    pl.stop()


def _link(lid: str, local: str, remote: str, status: str = "down", kind: str = "PHYS"):
    return {"qkd_link": {"qkdl_id": lid, "qkdl_type": kind, "qkdl_status": status,
                         "qkdl_local": {"qkdn_id": local}, "qkdl_remote": {"qkdn_id": remote}}}


def test_h2_only_a_node_of_the_inventory_writes_and_only_links_it_ends(plane, test_ca):
    before = _links(plane, test_ca)
    assert before["km0-km1"] == ("PHYS", "up")
    km01 = "/qkd_links/qkd_link/km0-km1"
    attacks = [
        # an application certificate named like a KM, or through its own CN in the URL
        ("km0", "sae", "DELETE", f"/km0{km01}", None),
        ("sae-0", "sae", "DELETE", f"/sae-0{km01}", None),
        ("sae-0", "sae", "PUT", f"/sae-0{km01}", _link("km0-km1", "sae-0", "km1")),
        ("sae-0", "sae", "PUT", "/km0", {"qkd_node": {"qkdn_id": "km0", "qkd_links": {
            "qkd_link": [_link("km0-km1", "km0", "km1")["qkd_link"]]}}}),
        # a node certificate for a link it does not end
        ("km3", "node", "DELETE", f"/km3{km01}", None),
        ("km3", "node", "PUT", f"/km3{km01}", _link("km0-km1", "km3", "km1")),
        ("km3", "node", "PUT", f"/km3{km01}", _link("km0-km1", "km0", "km1")),
        ("km3", "node", "PUT", "/km3", {"qkd_node": {"qkdn_id": "km3", "qkd_links": {
            "qkd_link": [_link("km0-km1", "km0", "km1")["qkd_link"]]}}}),
        # a node certificate of a node the inventory does not have
        ("km9", "node", "PUT", f"/km9{km01}", _link("km0-km1", "km9", "km1")),
        # admission control writes VIRT links, never a PHYS one
        ("admission", "node", "DELETE", f"/km0{km01}", None),
        ("admission", "node", "PUT", f"/km0{km01}", _link("km0-km1", "km0", "km1", "down",
                                                          "VIRT")),
    ]
    for cn, ou, method, path, body in attacks:
        r = _sdn(plane, test_ca, cn, ou, method, path, json=body)
        assert r.status_code == 403, (cn, ou, method, path, r.status_code, r.text)
        assert r.json()["message"], (cn, method, path)
    assert _links(plane, test_ca) == before
    # What is allowed still works: the link's own end takes it down, admission a VIRT link.
    assert _sdn(plane, test_ca, "km1", "node", "PUT", f"/km1{km01}",
                json=_link("km0-km1", "km1", "km0")).status_code == 200
    virt = _link("virt-s1", "km2", "km3", "up", "VIRT")
    assert _sdn(plane, test_ca, "admission", "node", "PUT", "/km2/qkd_links/qkd_link/virt-s1",
                json=virt).status_code == 200
    after = _links(plane, test_ca)
    assert after["km0-km1"] == ("PHYS", "down") and after["virt-s1"] == ("VIRT", "up")
    # ...and a node may not touch admission's VIRT link even where it is an end.
    r = _sdn(plane, test_ca, "km2", "node", "DELETE", "/km2/qkd_links/qkd_link/virt-s1")
    assert r.status_code == 403 and "VIRT" in r.json()["message"]
