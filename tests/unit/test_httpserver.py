"""The gated intake of qkdtwin.httpserver (finding H1) on loopback: per-address eviction,
head timeout, refusals from the gate, worker threads reserved for peer KMs."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import requests

from qkdtwin.httpserver import Limits, make_tls_server

pytestmark = pytest.mark.unit


@contextlib.contextmanager
def serving(test_ca, app, **limits) -> Iterator[int]:
    node = test_ca.issue("srv")
    server = make_tls_server(("127.0.0.1", 0), app, cert=node.cert, key=node.key,
                             ca=test_ca.ca, threads=limits.pop("threads", 4), name="t",
                             require_cert=False, limits=Limits(**limits))
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server.bind_addr[1]
    finally:
        server.stop()


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ.get("SSL_CLIENT_S_DN_CN", "-").encode()]


def get(test_ca, port, cn="sae-x", ou="sae", timeout=5.0):
    ident = test_ca.issue(cn, ou=ou)
    s = requests.Session()
    s.trust_env = False
    return s.get(f"https://127.0.0.1:{port}/", cert=(ident.cert, ident.key),
                 verify=test_ca.ca, timeout=timeout)


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def tls(test_ca, port) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=test_ca.ca)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                           server_hostname="localhost")


def test_per_address_limit_evicts_the_oldest_and_lets_a_newcomer_in(test_ca):
    with serving(test_ca, hello, per_addr=4) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        assert get(test_ca, port).text == "sae-x"  # the 7th, with a certificate: served
        assert closed_by_server(idle[0]) and closed_by_server(idle[1])
        assert not closed_by_server(idle[-1], timeout=0.5)  # the newest are still held
        for s in idle:
            s.close()


def test_a_trickled_head_is_closed_after_the_header_timeout(test_ca):
    with serving(test_ca, hello, header_timeout=1.0) as port:
        s = tls(test_ca, port)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert not closed_by_server(s, timeout=0.3)
        s.sendall(b"X-a: b\r\n")
        assert closed_by_server(s, timeout=5.0)
        s.close()


@pytest.mark.parametrize("head,code", [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b" 413 "),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b" 411 "),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000, b" 431 ")])
def test_gate_refuses_with_json(test_ca, head, code):
    with serving(test_ca, hello) as port:
        s = tls(test_ca, port)
        s.sendall(head)
        s.settimeout(5)
        answer = s.recv(4096)
        assert code in answer.split(b"\r\n")[0] and b'{"message": ' in answer
        s.close()


def test_worker_threads_reserved_for_peer_kms(test_ca):
    release = threading.Event()

    def app(environ, start_response):
        if environ.get("SSL_CLIENT_S_DN_OU") == "sae":
            release.wait(10)  # an application request that takes long
        return hello(environ, start_response)

    with serving(test_ca, app, threads=2, peer_reserve=1, peer_ous=("node",)) as port:
        slow = threading.Thread(target=get, args=(test_ca, port, "sae-1"))
        slow.start()
        with pytest.raises(requests.exceptions.ReadTimeout):
            get(test_ca, port, "sae-2", timeout=1.0)  # waits: the app thread is taken
        assert get(test_ca, port, "km1", ou="node").text == "km1"  # the reserved one
        release.set()
        slow.join(10)
