"""The lab's event recorder: subscribes to the bus as the operator (CN=host) and appends every
event, alarm and topology message to ``<out_dir>/<start time>.jsonl`` (one JSON object per
line, see :mod:`qkdtwin.events`); telemetry goes to ``telemetry/<start time>.jsonl`` when
enabled. Lines are flushed one by one, so the timeline and the dashboard can read a live
recording.

Deployed by the Ansible role ``recorder`` on the broker node, under that node's supervisord
(``python -m qkdtwin.recorder --config /etc/qkdtwin/recorder/recorder.yml``); in the netns
runtime it writes straight into ``labs/clab-<lab>/events/``. ``qkdtwin record LAB`` runs the
same recorder in the foreground on the host (e.g. for a containerlab lab).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter

from qkdtwin import messages as m
from qkdtwin.bus import PREFIX, BrokerConfig, Bus, Message
from qkdtwin.errors import UserError
from qkdtwin.events import record_line

log = logging.getLogger("qkdtwin.recorder")

EVENT_TOPICS = (f"{PREFIX}/events/#", f"{PREFIX}/alarm/#", f"{PREFIX}/topology")
RECORDED = (m.Event, m.LinkAlarm, m.Topology)
TELEMETRY_TOPIC = f"{PREFIX}/telemetry/#"


class _Sink:
    """An append-only JSON-lines file, rotated at ``max_bytes`` (keeps ``keep`` old files)."""

    def __init__(self, path: Path, max_bytes: int, keep: int = 2) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._fh: TextIO = path.open("a", encoding="utf-8")
        self.lines = 0

    def write(self, line: str) -> None:
        self._fh.write(line + "\n")
        self._fh.flush()
        self.lines += 1
        if self.max_bytes and self._fh.tell() > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.stem}.{i}.old")
            newer = self.path if i == 1 else self.path.with_name(f"{self.path.stem}.{i - 1}.old")
            if newer.exists():
                newer.replace(older)
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()


class Recorder:
    def __init__(self, broker: BrokerConfig, out_dir: str | Path, *, telemetry: bool = False,
                 max_bytes: int = 200 * 2**20, client_id: str = "recorder") -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the events directory {self.out_dir}: {exc}") from None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.events = _Sink(self.out_dir / f"{stamp}.jsonl", max_bytes)
        self.telemetry = None
        if telemetry:  # a subdirectory: events/*.jsonl stays events only
            (self.out_dir / "telemetry").mkdir(exist_ok=True)
            self.telemetry = _Sink(self.out_dir / "telemetry" / f"{stamp}.jsonl", max_bytes)
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.recorded = Counter("qkdtwin_recorder_messages_total", "Messages recorded",
                                ["channel"], registry=self.registry)
        # one worker: lines keep the order in which the broker delivered them
        self.bus = Bus(broker, client_id, workers=1)

    @property
    def path(self) -> Path:
        return self.events.path

    def start(self, wait: float = 10.0) -> Recorder:
        for t in EVENT_TOPICS:
            self.bus.subscribe(t, self._on_event)
        if self.telemetry is not None:
            self.bus.subscribe(TELEMETRY_TOPIC, self._on_telemetry)
        self.bus.start(wait)
        log.info("recording to %s", self.events.path)
        return self

    def _on_event(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        m.decode_any(payload, RECORDED)  # a malformed payload is logged by the bus, not kept
        line = record_line(topic, payload, time.time())
        with self._lock:
            self.events.write(line)
        self.recorded.labels(channel=topic.split("/")[2]).inc()

    def _on_telemetry(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        if self.telemetry is None:
            return
        m.decode_telemetry(payload)
        line = record_line(topic, payload, time.time())
        with self._lock:
            self.telemetry.write(line)
        self.recorded.labels(channel="telemetry").inc()

    def stop(self) -> None:
        self.bus.stop()
        with self._lock:
            self.events.close()
            if self.telemetry is not None:
                self.telemetry.close()


def _serve(rec: Recorder, health: dict[str, Any] | None) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = None
    if health:
        from qkdtwin.service import HealthServer

        server = HealthServer(str(health.get("host", "127.0.0.1")), int(health["port"]),
                              rec.registry, lambda: {"ok": rec.bus.connected,
                                                     "broker": rec.bus.connected,
                                                     "file": str(rec.path),
                                                     "lines": rec.events.lines}).start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if server is not None:
            server.stop()
        rec.stop()


def service_main(config: dict[str, Any]) -> None:
    """``python -m qkdtwin.recorder --config PATH``: broker, out_dir, telemetry, health."""
    try:
        broker = BrokerConfig.from_dict(config["broker"])
        out_dir = config["out_dir"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"recorder config needs broker {{host, port, ca, cert, key}} and "
                        f"out_dir: missing {exc}") from None
    rec = Recorder(broker, out_dir, telemetry=bool(config.get("telemetry", False)),
                   max_bytes=int(config.get("max_bytes", 200 * 2**20))).start()
    _serve(rec, config.get("health"))


# --- qkdtwin record LAB --------------------------------------------------------------------

def cmd_record(args: argparse.Namespace) -> int:
    from qkdtwin.labops.lab import DeployedLab

    lab = DeployedLab.load(args.lab)
    out = Path(args.out) if args.out else lab.lab_dir / "events"
    rec = Recorder(lab.broker_config(), out, telemetry=args.telemetry, client_id="recorder-cli")
    rec.start(wait=5.0)
    if not rec.bus.connected:
        rec.stop()
        b = lab.broker()
        raise UserError(f"cannot connect to the broker of lab {lab.name} at "
                        f"{b['host']}:{b['port']} (is the lab deployed and up?)")
    print(f"recording lab {lab.name} to {rec.path} (Ctrl-C to stop)", file=sys.stderr)
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        rec.stop()
    print(f"{rec.events.lines} messages recorded in {rec.path}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "record", help="record a lab's events on the host (the deployed lab already runs a "
                       "recorder on its broker node)")
    p.add_argument("lab", metavar="LAB", help="deployed lab (name or labs/<lab>.clab.yml)")
    p.add_argument("--out", metavar="DIR", help="default: labs/clab-<lab>/events/")
    p.add_argument("--telemetry", action="store_true", help="also record telemetry")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.set_defaults(func=cmd_record)


def main(argv: list[str] | None = None) -> int:
    from qkdtwin.service import run_service

    return run_service(service_main, "qkdtwin event recorder", argv)


if __name__ == "__main__":
    sys.exit(main())
