"""The containerlab runtime's images, built here and run: `make images` (scripts/build-images.sh)
from a local debootstrap base, then containers from them.

A Docker engine comes from scripts/docker-up.sh (Debian's docker.io, dockerd started by hand
without iptables or bridge); the tests skip only when no engine can be installed or started.
Containers run with `--network none`: everything is checked from inside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from qkdtwin.runtime.clab import NODE_DATA_DIR, NODE_PYTHON

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
NODE = "qkdtwin/node:latest"
BROKER = "qkdtwin/broker:latest"
PREFIX = "qkdtwin-imgtest-"
NODE_MAX_MB = 480  # measured: 441 MB on the local base, ~200 MB of it numba + LLVM (runtimes.md)
BROKER_EXTRA_MAX_MB = 15


def sh(argv: list[str], timeout: float = 120, check: bool = True, **kw
       ) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


def dexec(container: str, script: str, timeout: float = 60, check: bool = True,
          ) -> subprocess.CompletedProcess:
    return sh(["docker", "exec", container, "sh", "-c", script], timeout=timeout, check=check)


def remove_leftovers() -> None:
    ids = sh(["docker", "ps", "-aq", "--filter", f"name={PREFIX}"]).stdout.split()
    if ids:
        sh(["docker", "rm", "-f", *ids])


@pytest.fixture(scope="module")
def images() -> dict[str, int]:
    """Build both images (a second build reuses the base and the cached layers)."""
    proc = subprocess.run([str(ROOT / "scripts" / "docker-up.sh")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"no Docker engine can be installed or started here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remove_leftovers()
    proc = sh([str(ROOT / "scripts" / "build-images.sh")], timeout=1500, check=False,
              cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sizes = {}
    for img in (NODE, BROKER):
        sizes[img] = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", img]).stdout)
    yield sizes
    remove_leftovers()


@pytest.fixture
def container(images, request):
    """Start a container of the given image (indirect param, default the node image)."""
    image = getattr(request, "param", NODE)
    name = f"{PREFIX}{request.node.name.split('[')[0][-30:]}-{os.getpid()}".replace("_", "-")
    sh(["docker", "rm", "-f", name], check=False)
    sh(["docker", "run", "-d", "--name", name, "--network", "none", image])
    yield name
    sh(["docker", "rm", "-f", name], check=False)


def test_images_are_small(images):
    node_mb = images[NODE] / 1e6
    extra_mb = (images[BROKER] - images[NODE]) / 1e6
    print(f"\nqkdtwin/node {node_mb:.0f} MB, qkdtwin/broker {images[BROKER] / 1e6:.0f} MB "
          f"(+{extra_mb:.1f} MB over the node's layers)")
    assert node_mb < NODE_MAX_MB
    assert 0 < extra_mb < BROKER_EXTRA_MAX_MB
    cfg = json.loads(sh(["docker", "image", "inspect", NODE]).stdout)[0]["Config"]
    assert cfg["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert cfg["Labels"]["io.qkdtwin.python"] == NODE_PYTHON


def test_node_runs_the_package_and_tools(container):
    # PID 1 is tini: the container keeps running and reaps what Ansible starts.
    assert "tini" in dexec(container, "tr '\\0' ' ' </proc/1/cmdline").stdout
    assert dexec(container, "command -v python").stdout.strip() == \
        str(Path(NODE_PYTHON).parent / "python")
    for tool in ("ip", "tc", "nft", "ping", "mosquitto_pub", "mosquitto_sub", "tini", "pgrep"):
        dexec(container, f"command -v {tool}")
    dexec(container, f"test -d {NODE_DATA_DIR} && test -d /etc/qkdtwin")
    # Every module of the package imports, except host-only plotting (matplotlib is left
    # out of the node image on purpose); no service module may need it.
    script = textwrap.dedent("""
        import importlib, json, pkgutil, qkdtwin
        bad = {}
        for m in pkgutil.walk_packages(qkdtwin.__path__, "qkdtwin."):
            if m.name.endswith(".__main__"):  # entry points run on import, by design
                continue
            try:
                importlib.import_module(m.name)
            except BaseException as exc:
                bad[m.name] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(bad))
    """)
    bad = json.loads(sh(["docker", "exec", container, "python", "-c", script]).stdout)
    not_plotting = {m: e for m, e in bad.items() if "matplotlib" not in e}
    assert not not_plotting, not_plotting
    services = ("qkdtwin.key_manager", "qkdtwin.qkd_module", "qkdtwin.control", "qkdtwin.bus",
                "qkdtwin.service")
    assert not [m for m in bad if m.startswith(services)], bad


def test_supervisord_runs_a_service_like_role_common(container):
    """One supervisord per node, started with qkdtwin_python as roles/common does."""
    conf = textwrap.dedent(f"""
        [unix_http_server]
        file = {NODE_DATA_DIR}/run/supervisor.sock
        [supervisord]
        pidfile = {NODE_DATA_DIR}/run/supervisord.pid
        logfile = {NODE_DATA_DIR}/logs/supervisord.log
        childlogdir = {NODE_DATA_DIR}/logs
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [supervisorctl]
        serverurl = unix://{NODE_DATA_DIR}/run/supervisor.sock
        [program:probe]
        command = {NODE_PYTHON} -c "import qkdtwin.bus, time; time.sleep(3600)"
        startsecs = 1
    """)
    dexec(container, f"mkdir -p {NODE_DATA_DIR}/run {NODE_DATA_DIR}/logs && "
                     f"cat >/etc/qkdtwin/supervisord.conf <<'EOF'\n{conf}\nEOF")
    dexec(container, f"{NODE_PYTHON} -m supervisor.supervisord -c /etc/qkdtwin/supervisord.conf")
    ctl = f"{NODE_PYTHON} -m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline:
        out = dexec(container, f"{ctl} status probe", check=False).stdout
        if "RUNNING" in out:
            break
        time.sleep(0.5)
    assert "RUNNING" in out, out
    # supervisord daemonized: reparented to tini, which keeps running.
    dexec(container, "pgrep -f supervisor.supervisord")


@pytest.mark.parametrize("container", [BROKER], indirect=True)
def test_broker_image_runs_mosquitto(container):
    dexec(container, "printf 'listener 1883 127.0.0.1\\nallow_anonymous true\\n' "
                     ">/tmp/m.conf && mosquitto -d -c /tmp/m.conf")
    out = dexec(container, "for i in $(seq 50); do "
                           "mosquitto_pub -h 127.0.0.1 -t probe -n 2>/dev/null && break; "
                           "sleep 0.1; done; "
                           "(mosquitto_sub -h 127.0.0.1 -t qkd/v1/test -C 1 -W 10 &) ; "
                           "sleep 0.5; mosquitto_pub -h 127.0.0.1 -t qkd/v1/test -m hello; "
                           "sleep 0.5", timeout=30).stdout
    assert "hello" in out


# --------------------------------------------------------------------------- key manager


def _service_ready(module: str) -> bool:
    return (ROOT / "src" / "qkdtwin" / module.replace(".", "/") / "__main__.py").exists()


@pytest.fixture
def km_container(images, tmp_path):
    """A node container with PKI and a KM configuration mounted at /etc/qkdtwin."""
    from tests.support.pki import TestCA

    etc = tmp_path / "etc"
    tls = etc / "tls"
    ca = TestCA(tls)
    node = ca.issue("km0", ou="node")
    sae = ca.issue("sae-1", ou="sae", o="alice")
    rogue = TestCA(tmp_path / "rogue").issue("sae-1", ou="sae", o="alice")
    for ident, stem in ((node, "node"), (sae, "sae-1"), (rogue, "rogue")):
        Path(ident.cert).rename(tls / f"{stem}.crt")
        Path(ident.key).rename(tls / f"{stem}.key")
    (etc / "km.yml").write_text(yaml.safe_dump({
        "node": "km0",
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": {"ca": "/etc/qkdtwin/tls/ca.crt", "cert": "/etc/qkdtwin/tls/node.crt",
                "key": "/etc/qkdtwin/tls/node.key"},
        "data_dir": NODE_DATA_DIR,
        "modules": [],
    }))
    os.chmod(etc, 0o755)
    name = f"{PREFIX}km-{os.getpid()}"
    sh(["docker", "rm", "-f", name], check=False)
    sh(["docker", "run", "-d", "--name", name, "--network", "none",
        "-v", f"{etc}:/etc/qkdtwin", NODE])
    yield name
    sh(["docker", "rm", "-f", name], check=False)


def test_key_manager_answers_etsi014_status_over_mtls(km_container):
    if not _service_ready("key_manager"):
        pytest.skip("the Key Manager service (python -m qkdtwin.key_manager) is not written "
                    "yet; the image is ready for it (see docs/runtimes.md)")
    c = km_container
    dexec(c, f"cd {NODE_DATA_DIR} && nohup {NODE_PYTHON} -m qkdtwin.key_manager "
             f"--config /etc/qkdtwin/km.yml >{NODE_DATA_DIR}/km.log 2>&1 &")
    probe = textwrap.dedent("""
        import json, sys, time, requests
        url = "https://127.0.0.1:8443/api/v1/keys/sae-2/status"
        ca = "/etc/qkdtwin/tls/ca.crt"
        cert = ("/etc/qkdtwin/tls/sae-1.crt", "/etc/qkdtwin/tls/sae-1.key")
        for _ in range(100):
            try:
                r = requests.get(url, cert=cert, verify=ca, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            sys.exit("no answer")
        try:  # no client certificate: refused at TLS or with an ETSI 401
            no_cert = requests.get(url, verify=ca, timeout=5).status_code
        except requests.ConnectionError:
            no_cert = "tls-refused"
        try:  # a certificate of another CA never gets through the handshake
            requests.get(url, verify=ca, timeout=5, cert=(
                "/etc/qkdtwin/tls/rogue.crt", "/etc/qkdtwin/tls/rogue.key"))
            rogue = "accepted"
        except requests.ConnectionError:
            rogue = "tls-refused"
        print(json.dumps({"code": r.status_code, "body": r.json(), "no_cert": no_cert,
                          "rogue": rogue}))
    """)
    proc = sh(["docker", "exec", c, "python", "-c", probe], timeout=60, check=False)
    log = dexec(c, f"tail -n 30 {NODE_DATA_DIR}/km.log", check=False).stdout
    assert proc.returncode == 0, proc.stderr + "\nKM log:\n" + log
    got = json.loads(proc.stdout)
    print(f"\nETSI 014 status from the KM in the container: {got}")
    assert got["no_cert"] in (401, "tls-refused"), got
    assert got["rogue"] == "tls-refused", got
    # An ETSI 014 answer: the status object, or an ETSI error body with a message.
    body = got["body"]
    assert (got["code"] == 200 and "key_size" in body) or "message" in body, got
