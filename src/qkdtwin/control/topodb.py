"""The topology database owned by the Routing Element: PHYS links with status, alarm and
metrics, per-session capacity reservations, and path computation on a networkx graph.

Link weight (lower is better), documented in docs/control-plane.md::

    w = 1                                  one per hop: with no metrics all links are equal
      + qber / qber_threshold              0 .. 1 while the link is healthy
      + reserved_bps / capacity_bps        load already admitted on the link, 0 .. 1
      + 0.5 * S / (S + stored_bits)        scarcity of stored key (S = stored_ref_bits)
      + suspect_penalty                    while the link has a qber_suspicious alarm

A link is usable for a request when its status is ``up``, it has no ``link_down`` or
``qber_high`` alarm, it is not in ``exclude_links`` and ``capacity - reserved >= rate``
(capacity = measured secret key rate, or ``default_capacity_bps`` before any metric).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import networkx as nx

from qkdtwin.sqlite import open_db

BLOCKING_ALARMS = ("link_down", "qber_high")


class TopologyDB:
    def __init__(self, path: str | Path | None = None, *, qber_threshold: float = 0.11,
                 default_capacity_bps: float = 1e6, stored_ref_bits: float = 1e6,
                 suspect_penalty: float = 4.0) -> None:
        self.qber_threshold = qber_threshold
        self.default_capacity_bps = default_capacity_bps
        self.stored_ref_bits = stored_ref_bits
        self.suspect_penalty = suspect_penalty
        self.lock = threading.RLock()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.links: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.alarms: dict[str, str] = {}
        self.reservations: dict[str, dict[str, Any]] = {}  # session -> {rate_bps, links}
        self._db = None
        if path is not None:
            self._db = open_db(path)
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (kind TEXT, key TEXT, value TEXT,"
                             " PRIMARY KEY (kind, key))")
            for kind, key, value in self._db.execute("SELECT kind, key, value FROM kv"):
                getattr(self, kind)[key] = json.loads(value)

    def _save(self, kind: str, key: str, value: Any) -> None:
        if self._db is None:
            return
        if value is None:
            self._db.execute("DELETE FROM kv WHERE kind=? AND key=?", (kind, key))
        else:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)",
                             (kind, key, json.dumps(value)))

    # -- updates --

    def set_topology(self, topo: dict[str, Any]) -> None:
        """Replace nodes and PHYS links from the SDN controller's ``topology`` message."""
        with self.lock:
            self.nodes = {n["id"]: n for n in topo.get("nodes", []) if isinstance(n, dict)
                          and "id" in n}
            links = {}
            for lk in topo.get("links", []):
                if isinstance(lk, dict) and lk.get("type", "PHYS") == "PHYS" \
                        and {"id", "a", "b"} <= lk.keys():
                    links[lk["id"]] = {"id": lk["id"], "a": lk["a"], "b": lk["b"],
                                       "status": lk.get("status", "up")}
            for lid in set(self.links) | set(links):
                self._save("links", lid, links.get(lid))
            self.links = links

    def set_metrics(self, link: str, m: dict[str, Any]) -> None:
        keep = ("skr_bps", "qber", "stored_bits", "rtt_ms", "sessions", "status")
        with self.lock:
            cur = self.metrics.get(link, {})
            cur.update({k: m[k] for k in keep if m.get(k) is not None})
            cur["ts"] = time.time()
            self.metrics[link] = cur
            self._save("metrics", link, cur)

    def set_alarm(self, link: str, kind: str) -> None:
        with self.lock:
            if kind == "clear":
                self.alarms.pop(link, None)
                self._save("alarms", link, None)
            else:
                self.alarms[link] = kind
                self._save("alarms", link, kind)

    # -- weights and capacity --

    def capacity(self, link: str) -> float:
        skr = self.metrics.get(link, {}).get("skr_bps")
        return float(skr) if skr is not None else self.default_capacity_bps

    def reserved(self, link: str, ignore: str | None = None) -> float:
        return sum(r["rate_bps"] for s, r in self.reservations.items()
                   if s != ignore and link in r["links"])

    def weight(self, link: str, ignore: str | None = None) -> float:
        m = self.metrics.get(link, {})
        w = 1.0
        if m.get("qber") is not None:
            w += float(m["qber"]) / self.qber_threshold
        cap = self.capacity(link)
        w += min(self.reserved(link, ignore) / cap, 1.0) if cap > 0 else 1.0
        if m.get("stored_bits") is not None:
            s = self.stored_ref_bits
            w += 0.5 * s / (s + max(float(m["stored_bits"]), 0.0))
        if self.alarms.get(link) == "qber_suspicious":
            w += self.suspect_penalty
        return w

    def usable(self, link: str, rate_bps: float, exclude: set[str], ignore: str | None) -> bool:
        lk = self.links[link]
        if lk.get("status", "up") != "up" or link in exclude:
            return False
        if self.alarms.get(link) in BLOCKING_ALARMS:
            return False
        return self.capacity(link) - self.reserved(link, ignore) >= rate_bps

    def graph(self, rate_bps: float = 0.0, exclude: set[str] | None = None,
              ignore: str | None = None) -> nx.Graph:
        """The graph of usable links; parallel links between two nodes keep the best."""
        g = nx.Graph()
        g.add_nodes_from(self.nodes)
        for lid, lk in self.links.items():
            if not self.usable(lid, rate_bps, exclude or set(), ignore):
                continue
            w = self.weight(lid, ignore)
            a, b = lk["a"], lk["b"]
            if not g.has_edge(a, b) or g[a][b]["w"] > w:
                g.add_edge(a, b, w=w, link=lid)
        return g

    # -- paths --

    def find_path(self, src: str, dst: str, rate_bps: float = 0.0,
                  exclude: list[str] | None = None, session_id: str | None = None,
                  reserve: bool = False, backup: bool = True) -> dict[str, Any]:
        """The best usable path; with ``reserve`` the session's rate is booked on its links
        (a re-route of the same session replaces its old booking)."""
        with self.lock:
            g = self.graph(rate_bps, set(exclude or ()), ignore=session_id)
            if src == dst:
                return {"ok": False, "reason": "source and destination are the same KM"}
            if src not in g or dst not in g:
                missing = src if src not in g else dst
                return {"ok": False, "reason": f"unknown KM {missing}"}
            try:
                path = nx.shortest_path(g, src, dst, weight="w")
            except nx.NetworkXNoPath:
                return {"ok": False, "reason": f"no path from {src} to {dst} with "
                                               f"{rate_bps:g} bit/s free"}
            links = [g[a][b]["link"] for a, b in zip(path, path[1:], strict=False)]
            weight = sum(g[a][b]["w"] for a, b in zip(path, path[1:], strict=False))
            alt = None
            if backup:
                g2 = g.copy()
                g2.remove_edges_from(zip(path, path[1:], strict=False))
                try:
                    p2 = nx.shortest_path(g2, src, dst, weight="w")
                    alt = {"path": p2,
                           "links": [g2[a][b]["link"] for a, b in zip(p2, p2[1:], strict=False)]}
                except nx.NetworkXNoPath:
                    alt = None
            if reserve and session_id:
                self.reservations[session_id] = {"rate_bps": rate_bps, "links": links}
                self._save("reservations", session_id, self.reservations[session_id])
            return {"ok": True, "path": path, "links": links, "weight": round(weight, 4),
                    "backup": alt}

    def release(self, session_id: str) -> bool:
        with self.lock:
            found = self.reservations.pop(session_id, None) is not None
            self._save("reservations", session_id, None)
            return found

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "nodes": list(self.nodes.values()),
                "links": [{**lk, "alarm": self.alarms.get(lid),
                           "metrics": self.metrics.get(lid, {}),
                           "capacity_bps": self.capacity(lid),
                           "reserved_bps": self.reserved(lid),
                           "sessions": [s for s, r in self.reservations.items()
                                        if lid in r["links"]],
                           "weight": round(self.weight(lid), 4)}
                          for lid, lk in sorted(self.links.items())],
                "reservations": self.reservations,
            }
