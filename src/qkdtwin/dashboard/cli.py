"""`qkdtwin dashboard LAB [--port 8050]`: serve the live dashboard of a deployed lab.

It connects to the lab's broker as the operator (CN=host, ``labs/clab-<lab>/pki/host.*``),
reads everything (topology, telemetry, alarms, events) and serves the page with cheroot on
127.0.0.1 (``--host 0.0.0.0 --allow-host NAME`` to show it to others). The controls need the
per-run token in the URL it prints (qkdtwin.dashboard.guard).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cheroot import wsgi

from qkdtwin.bus import PREFIX, BrokerConfig, Bus
from qkdtwin.dashboard.app import create_app
from qkdtwin.dashboard.state import LiveState
from qkdtwin.errors import UserError
from qkdtwin.events import load_events
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.labops.operations import LabOperator

TOPICS = (f"{PREFIX}/topology", f"{PREFIX}/telemetry/#", f"{PREFIX}/alarm/#",
          f"{PREFIX}/events/#")


def connect_state(state: LiveState, broker: BrokerConfig, client_id: str = "dashboard",
                  wait: float = 5.0) -> Bus:
    """A bus that feeds every lab message into ``state``."""
    bus = Bus(broker, client_id, workers=2)

    def on_message(topic: str, payload: dict[str, Any], msg: Any) -> None:
        state.connected = True
        state.feed(topic, payload)

    for t in TOPICS:
        bus.subscribe(t, on_message, qos=0)
    bus.on_connected(lambda: setattr(state, "connected", True))
    bus.start(wait)
    state.connected = bus.connected
    return bus


class Server:
    """cheroot serving a WSGI app in a background thread."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.server = wsgi.Server((host, port), app, numthreads=8,
                                  server_name="qkdtwin-dashboard")
        self.server.prepare()  # binds now: a busy port is an error here, not in the thread
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True,
                                       name="dashboard-http")

    def start(self) -> Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()


def replay_recording(state: LiveState, events_dir: Path, last_s: float = 3600.0) -> int:
    """Replay the last hour of the lab's newest recording file into ``state``."""
    files = sorted(events_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) \
        if events_dir.is_dir() else []
    if not files:
        return 0
    events = load_events(files[-1])
    cut = time.time() - last_s
    return state.replay([e for e in events if e.ts >= cut])


def build(lab_ref: str) -> tuple[LiveState, LabOperator, Bus]:
    """State, actions and bus of a deployed lab."""
    lab = DeployedLab.load(lab_ref)
    state = LiveState(lab.name, lab.nodes, lab.qkd_links)
    replay_recording(state, lab.lab_dir / "events")
    actions = LabOperator(lab)
    bus = connect_state(state, lab.broker_config())
    return state, actions, bus


def cmd_dashboard(args: argparse.Namespace) -> int:
    state, actions, bus = build(args.lab)
    if not bus.connected:
        print(f"qkdtwin dashboard: the broker of lab {state.lab} does not answer yet; "
              "retrying in the background", file=sys.stderr)
    wildcard = args.host in ("0.0.0.0", "::", "")
    allowed = list(args.allow_host or []) + ([] if wildcard else [args.host])
    app = create_app(state, actions, bus, allowed_hosts=allowed)
    try:
        server = Server(app, args.host, args.port)
    except OSError as exc:
        bus.stop()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    server.start()
    shown = "127.0.0.1" if wildcard else args.host
    token = app.config["QKDTWIN_TOKEN"]
    print(f"dashboard of lab {state.lab}: http://{shown}:{server.port}/?token={token}  "
          "(Ctrl-C to stop)", flush=True)
    if wildcard or args.host not in ("127.0.0.1", "localhost", "::1"):
        print("qkdtwin dashboard: listening beyond loopback; anyone who can reach it may watch "
              "the lab, and anyone with the token in this URL may cut links",
              file=sys.stderr, flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        bus.stop()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="live web dashboard of a deployed lab")
    p.add_argument("lab", metavar="LAB", help="deployed lab (name or labs/<lab>.clab.yml)")
    p.add_argument("--port", type=int, default=8050, help="HTTP port (default 8050)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a name (or address) others use to reach the dashboard; repeatable")
    p.set_defaults(func=cmd_dashboard)
