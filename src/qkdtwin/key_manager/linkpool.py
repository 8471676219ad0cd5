"""Link-key pools, one per QKD link, kept in step with the KM at the other end.

The link's ``a`` end is the master of its module: its KM pulls keys with ETSI 014 enc_keys,
stores them as *pending*, tells the peer KM the key IDs (``POST /kmapi/v1/link_keys``); the
``b`` KM fetches exactly those IDs from its own module with dec_keys and stores them; then
the ``a`` KM marks them available. Each key gets an *owner*: only the owner encrypts with
it, the other end decrypts, so the two KMs never pick the same key at once. New keys go to
whichever direction holds fewer, so each direction is refilled as it is used.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkdtwin.key_manager.config import LinkConfig, PoolConfig
from qkdtwin.key_manager.keystore import KeyStore
from qkdtwin.key_manager.peers import HttpClient, PeerError

log = logging.getLogger("qkdtwin.key_manager.linkpool")
SYNC_BATCH = 256  # key IDs per announcement to the peer KM (and per dec_keys call)


class LinkPool:
    def __init__(self, node: str, lc: LinkConfig, pc: PoolConfig, store: KeyStore,
                 peers: HttpClient, modules: HttpClient, on_change: Callable[[str], None]) -> None:
        self.node = node
        self.lc = lc
        self.pc = pc
        self.store = store
        self.peers = peers
        self.modules = modules
        self.on_change = on_change
        self.key_bytes = pc.link_key_size // 8
        self.status = "starting"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rx_lock = threading.Lock()
        self._want = pc.batch
        self._token: str | None = None  # the module's API token, read when first needed

    @property
    def link(self) -> str:
        return self.lc.link

    def start(self) -> LinkPool:
        if self.lc.side == "a":
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"pool-{self.link}")
            self._thread.start()
        else:
            self.status = "up"
        return self

    def stop(self) -> None:
        self._stop.set()

    def own_bytes(self) -> int:
        return self.store.link_key_count(self.link, self.node) * self.key_bytes

    def level_bits(self) -> int:
        return self.store.link_key_count(self.link) * self.key_bytes * 8

    # -- a side ------------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = self.pc.poll_s
        while not self._stop.is_set():
            try:
                self._resend_pending()
                own = self.store.link_key_count(self.link, self.node)
                peer = self.store.link_key_count(self.link, self.lc.peer)
                total = own + peer
                half = self.pc.low_keys // 2
                if (own < half or peer < half) and total < self.pc.max_keys:
                    n = min(self._want, self.pc.max_keys - total)
                    got = self._pull(n, own, peer)
                    self.status = "up"
                    backoff = self.pc.poll_s
                    if got:
                        continue
                self._stop.wait(self.pc.poll_s)
            except PeerError as exc:
                self.status = "degraded"
                log.warning("link %s: %s", self.link, exc, extra={"link": self.link})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)  # peers restart fast
            except Exception:  # keep the pool alive whatever happens
                log.exception("link %s pool loop failed", self.link)
                self._stop.wait(1.0)

    def _pull(self, n: int, own: int = 0, peer: int = 0) -> int:
        url = f"{self.lc.module_url}/api/v1/keys/{self.lc.module_sae_id}/enc_keys"
        try:
            data = self._module_post(url, {"number": n, "size": self.pc.link_key_size})
        except PeerError as exc:
            if exc.status == 503:
                # the module has not that much key yet (a real module answers all or nothing):
                # ask for less next time, down to one key
                self._want = max(1, n // 2)
                return 0
            raise
        self._want = self.pc.batch
        keys = _parse_keys(data)
        # owners so that both directions end up with the same number of keys: the side that
        # consumed more gets more (a pool full of the other side's keys would starve it)
        mine = min(len(keys), max(0, (own + peer + len(keys)) // 2 - own))
        entries = [(k, self.node if i < mine else self.lc.peer, v)
                   for i, (k, v) in enumerate(keys)]
        self.store.add_link_keys(self.link, entries, state=0)
        self._sync([(k, o) for k, o, _ in entries])
        return len(entries)

    def _module_post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the module with its API token (read again once if refused: the module
        creates the file at its first start, which may come after ours)."""
        for fresh in (False, True):
            if fresh or self._token is None:
                self._token = _read_token(self.lc.module_token_file)
            hdr = {"Authorization": f"Bearer {self._token}"} if self._token else None
            try:
                return self.modules.post(url, body, timeout=10, headers=hdr)
            except PeerError as exc:
                if exc.status != 401 or fresh:
                    raise
        raise AssertionError("unreachable")

    def _resend_pending(self) -> None:
        pending = self.store.pending_link_keys(self.link)
        if pending:
            self._sync(pending)

    def _sync(self, entries: list[tuple[str, str]]) -> None:
        for i in range(0, len(entries), SYNC_BATCH):
            self._sync_batch(entries[i:i + SYNC_BATCH])

    def _sync_batch(self, entries: list[tuple[str, str]]) -> None:
        ids = [k for k, _ in entries]
        try:
            self.peers.post(f"{self.lc.peer_url}/kmapi/v1/link_keys",
                            {"link": self.link, "from_km": self.node,
                             "keys": [{"key_ID": k, "owner": o} for k, o in entries]}, timeout=10)
        except PeerError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                # the peer cannot get these keys from its module: burn them on our side
                log.warning("link %s: peer refused %d keys (%s); discarding them", self.link,
                            len(ids), exc)
                with self.store.tx() as db:
                    self.store.take_peer_link_keys(db, self.link, self.node, [
                        k for k, o in entries if o == self.node])
                    self.store.take_peer_link_keys(db, self.link, self.lc.peer, [
                        k for k, o in entries if o != self.node])
                return
            raise
        self.store.confirm_link_keys(self.link, ids)
        self.on_change(self.link)

    # -- b side ------------------------------------------------------------------------------

    def receive(self, entries: list[dict[str, Any]]) -> int:
        """The a-side KM announced keys: fetch them from our module by ID and store them."""
        owners = {e["key_ID"]: e["owner"] for e in entries}
        with self._rx_lock:
            have = self.store.has_link_keys(self.link, list(owners))
            missing = [k for k in owners if k not in have]
            if missing:
                url = f"{self.lc.module_url}/api/v1/keys/{self.lc.module_sae_id}/dec_keys"
                data = self._module_post(url, {"key_IDs": [{"key_ID": k} for k in missing]})
                keys = dict(_parse_keys(data))
                if set(keys) != set(missing):
                    raise PeerError("module returned other keys than asked for", 502)
                self.store.add_link_keys(self.link, [(k, owners[k], keys[k]) for k in missing],
                                         state=1)
        self.status = "up"
        self.on_change(self.link)
        return len(missing)


def _read_token(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise PeerError(f"cannot read the module's API token {path}: {exc}") from None


def _parse_keys(data: dict[str, Any]) -> list[tuple[str, bytes]]:
    try:
        return [(str(k["key_ID"]), base64.b64decode(k["key"], validate=True))
                for k in data["keys"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PeerError(f"module answered a malformed key container: {exc}") from None
