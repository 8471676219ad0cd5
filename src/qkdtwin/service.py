"""What every qkdtwin service shares: ``--config PATH``, JSON-lines logging, and a small
HTTP endpoint with ``/healthz`` and Prometheus ``/metrics`` for services that are not web
applications themselves (the Flask services mount the same two routes on their own app).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from qkdtwin.errors import UserError


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._skip and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a service's YAML configuration; a clear UserError if it is missing or bad."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {p} not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping")
    return data


def config_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="path of the service's YAML config")
    return parser


class HealthServer:
    """``/healthz`` (JSON, 200 when ``check()`` says ok, else 503) and ``/metrics``."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 check: Callable[[], dict[str, Any]]) -> None:
        self.registry = registry
        self.check = check
        self.started = time.time()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path == "/healthz":
                    state = outer.check()
                    body = json.dumps({**state, "uptime_s": round(time.time() - outer.started, 1)})
                    self._send(200 if state.get("ok") else 503, body.encode(), "application/json")
                elif self.path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b'{"message": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # keep stdout for JSON logs
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True

    def start(self) -> HealthServer:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="health").start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def run_service(main: Callable[[dict[str, Any]], None], description: str,
                argv: list[str] | None = None) -> int:
    """Entry point shared by services: parse --config, set up logging, run ``main``."""
    args = config_arg_parser(description).parse_args(argv)
    try:
        config = load_config(args.config)
        setup_logging(config.get("log_level", "info"))
        main(config)
    except UserError as exc:
        print(json.dumps({"level": "error", "msg": str(exc)}), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
