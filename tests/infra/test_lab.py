"""testinfra checks of a deployed lab: every node, its links, the broker and its ACLs."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = [pytest.mark.infra]

SUPERVISORCTL = "{python} -m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"


# --------------------------------------------------------------------------- every node


def test_node_config_and_tls_material(deployed_lab, infra_node):
    host = deployed_lab.host(infra_node)
    for name in ("ca.crt", "node.crt"):
        f = host.file(f"/etc/qkdtwin/tls/{name}")
        assert f.is_file and f.mode == 0o644
    key = host.file("/etc/qkdtwin/tls/node.key")
    assert key.is_file and key.mode == 0o600
    # The node's own certificate, not another node's (the /etc overlay is per namespace).
    subject = host.check_output("openssl x509 -noout -subject -in /etc/qkdtwin/tls/node.crt")
    assert f"CN = {infra_node}" in subject and "OU = node" in subject
    conf = host.file("/etc/qkdtwin/supervisord.conf")
    assert conf.is_file
    assert "/etc/qkdtwin/supervisord.d/*.conf" in conf.content_string


def test_supervisord_runs_in_the_node(deployed_lab, infra_node):
    host = deployed_lab.host(infra_node)
    python = deployed_lab.all_vars["qkdtwin_python"]
    pid = host.check_output(SUPERVISORCTL.format(python=python) + " pid")
    assert pid.isdigit(), pid
    # Its network namespace is the node's: pids are global, namespaces are not.
    ns_of_pid = host.check_output(f"readlink /proc/{pid}/ns/net")
    ns_of_node = host.check_output("readlink /proc/self/ns/net")
    assert ns_of_pid == ns_of_node
    data_dir = deployed_lab.hostvars(infra_node)["qkdtwin_data_dir"]
    assert host.file(f"{data_dir}/run/supervisord.pid").content_string.strip() == pid
    # Its control server is on the node's own loopback only, behind a password.
    assert host.socket("tcp://127.0.0.1:9001").is_listening
    conf = host.file("/etc/qkdtwin/supervisord.conf")
    assert conf.mode == 0o600 and "password = " in conf.content_string


def test_key_material_is_owner_only(deployed_lab, infra_node):
    """Key stores (and their WAL, which holds recent pages in clear), API tokens and logs are
    0600 in a 0700 data dir: no other local user of the host reads a link key."""
    host = deployed_lab.host(infra_node)
    data_dir = deployed_lab.hostvars(infra_node)["qkdtwin_data_dir"]
    assert host.file(data_dir).mode == 0o700
    stores = host.check_output(
        f"find {data_dir} -name '*.sqlite*' -o -name '*.api-token' -o -name '*.log'").split()
    if infra_node in deployed_lab.nodes_with_role("km"):
        assert host.file(f"{data_dir}/key_manager").mode == 0o700
        assert {f"{data_dir}/key_manager/km.sqlite", f"{data_dir}/key_manager/km.sqlite-wal"} \
            <= set(stores)
    for link in deployed_lab.hostvars(infra_node)["qkdtwin_node_qkd_links"]:
        assert f"{data_dir}/qkd-{link['id']}.sqlite" in stores
    wide = {p: oct(host.file(p).mode) for p in stores if host.file(p).mode & 0o077}
    assert not wide, f"readable by others: {wide}"
    if stores:  # and a user other than root cannot read one
        r = host.run(f"runuser -u nobody -- head -c 1 {stores[0]}")
        assert r.rc != 0 and "Permission denied" in r.stderr, (r.rc, r.stderr)


def test_p2p_addresses_present(deployed_lab, infra_node):
    host = deployed_lab.host(infra_node)
    for iface in deployed_lab.hostvars(infra_node)["qkdtwin_interfaces"]:
        itf = host.interface(iface["name"])
        assert itf.exists, iface["name"]
        addr = iface["ipv4"].split("/")[0]
        assert addr in itf.addresses, (iface["name"], itf.addresses)


def test_peers_reachable_over_each_p2p_link(deployed_lab, infra_node):
    host = deployed_lab.host(infra_node)
    interfaces = deployed_lab.hostvars(infra_node)["qkdtwin_interfaces"]
    for iface in interfaces:
        # Several probes: a link may carry a configured loss impairment.
        cmd = host.run("ping -c 5 -i 0.05 -W 2 -I %s %s", iface["name"], iface["peer_ipv4"])
        assert cmd.rc == 0, (iface, cmd.stdout, cmd.stderr)


# --------------------------------------------------------------------------- broker


def _broker(deployed_lab) -> tuple[str, int]:
    b = deployed_lab.all_vars["qkdtwin_broker"]
    return b["host"], int(b["port"])


def _tls_context(deployed_lab, identity: str | None) -> ssl.SSLContext:
    pki = deployed_lab.pki
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity:
        ctx.load_cert_chain(pki / f"{identity}.crt", pki / f"{identity}.key")
    return ctx


def test_broker_listens_with_tls_on_its_mgmt_address(deployed_lab):
    (node,) = deployed_lab.nodes_with_role("broker")
    host_addr, port = _broker(deployed_lab)
    assert deployed_lab.host(node).socket(f"tcp://{host_addr}:{port}").is_listening
    ctx = _tls_context(deployed_lab, "host")
    with socket.create_connection((host_addr, port), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname=node) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            assert subject["commonName"] == node


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_broker_refuses_tls_1_1_and_clients_without_certificate(deployed_lab):
    host_addr, port = _broker(deployed_lab)
    old = _tls_context(deployed_lab, "host")
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that the client could speak TLS 1.1
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((host_addr, port), timeout=15) as raw:
            with old.wrap_socket(raw, server_hostname="broker"):
                pass
    # Without a client certificate the handshake (TLS 1.2) or the first read (TLS 1.3) fails.
    anon = _tls_context(deployed_lab, None)
    anon.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((host_addr, port), timeout=15) as raw:
            with anon.wrap_socket(raw) as tls:
                tls.sendall(b"\x10\x00")
                if not tls.recv(1):
                    raise ConnectionError("closed by the broker")


class Client:
    """A paho MQTT v5 client with a lab identity (pki/<identity>.{crt,key})."""

    def __init__(self, deployed_lab, identity: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.suback: list[int] = []
        self.puback: dict[int, int] = {}
        self._event = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"infra-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.c.tls_set_context(_tls_context(deployed_lab, identity))
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        host, port = _broker(deployed_lab)
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        deadline = time.monotonic() + 15
        while not self.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.c.is_connected(), f"{identity} could not connect"

    def _on_message(self, client, userdata, msg):
        with self._event:
            self.received.append((msg.topic, msg.payload))
            self._event.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._event:
            self.suback.extend(rc.value for rc in reason_codes)
            self._event.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._event:
            self.puback[mid] = reason_code.value
            self._event.notify_all()

    def subscribe(self, topic: str) -> int:
        n = len(self.suback)
        self.c.subscribe(topic, qos=1)
        with self._event:
            assert self._event.wait_for(lambda: len(self.suback) > n, timeout=15)
            return self.suback[n]

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish with QoS 1; return the PUBACK reason code (135 = not authorized)."""
        info = self.c.publish(topic, payload, qos=1, properties=Properties(PacketTypes.PUBLISH))
        with self._event:
            assert self._event.wait_for(lambda: info.mid in self.puback, timeout=15)
            return self.puback[info.mid]

    def got(self, payload: bytes, timeout: float) -> bool:
        with self._event:
            return self._event.wait_for(
                lambda: any(p == payload for _, p in self.received), timeout=timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(deployed_lab):
    made: list[Client] = []

    def make(identity: str) -> Client:
        made.append(Client(deployed_lab, identity))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_km_reads_only_its_own_topics(deployed_lab, clients):
    kms = deployed_lab.nodes_with_role("km")
    assert len(kms) >= 2
    mine, other = kms[0], kms[1]
    me = clients(f"nodes/{mine}")
    peer = clients(f"nodes/{other}")
    operator = clients("host")

    assert me.subscribe(f"qkd/v1/km/{mine}/#") < 0x80
    assert peer.subscribe(f"qkd/v1/km/{other}/#") < 0x80
    # Mosquitto grants the subscription but never delivers what the ACL does not allow.
    me.subscribe(f"qkd/v1/km/{other}/#")

    own = f"own-{uuid.uuid4().hex}".encode()
    assert operator.publish(f"qkd/v1/km/{mine}/config", own) == 0
    assert me.got(own, timeout=15)

    foreign = f"foreign-{uuid.uuid4().hex}".encode()
    assert operator.publish(f"qkd/v1/km/{other}/config", foreign) == 0
    assert peer.got(foreign, timeout=15)  # the message was published and delivered...
    # ...but not to another KM. Messages of one publisher arrive in order, so a marker sent
    # after it on a topic km0 may read proves that the foreign one was not just late.
    marker = f"marker-{uuid.uuid4().hex}".encode()
    assert operator.publish(f"qkd/v1/km/{mine}/config", marker) == 0
    assert me.got(marker, timeout=15)
    assert not me.got(foreign, timeout=0.5)


def test_km_may_not_publish_on_another_kms_topic(deployed_lab, clients):
    mine, other = deployed_lab.nodes_with_role("km")[:2]
    me = clients(f"nodes/{mine}")
    peer = clients(f"nodes/{other}")
    assert peer.subscribe(f"qkd/v1/km/{other}/#") < 0x80

    forged = f"forged-{uuid.uuid4().hex}".encode()
    assert me.publish(f"qkd/v1/km/{other}/config", forged) == 135  # not authorized
    assert not peer.got(forged, timeout=2)
    # What a KM may write is accepted: its own events.
    assert me.publish(f"qkd/v1/events/{mine}", b"{}") in (0, 16)  # 16: no subscribers


def test_sae_certificate_has_no_broker_rights(deployed_lab, clients):
    sae = deployed_lab.all_vars["qkdtwin_users"][0]["applications"][0]["sae_id"]
    app = clients(f"sae/{sae}")
    assert app.publish("qkd/v1/admission/in", b"{}") == 135
    km = deployed_lab.all_vars["qkdtwin_users"][0]["applications"][0]["km"]
    assert app.publish(f"qkd/v1/admission/in/{km}", b"{}") == 135
