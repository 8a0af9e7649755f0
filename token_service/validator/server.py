"""Run the validator's HTTP server in a lean process: `python -m token_service.validator`.

`mltokens serve` checks the settings and then replaces itself (exec) with this module, so
the server and its workers never carry the CLI's imports (SQLAlchemy, Alembic: their
memory in every worker, docs/benchmarks.md "Costs the code relies on"). Servers, chosen by
measurement (docs/benchmarks.md):

- `lean` (default): the validator's own HTTP/1.1 protocol (`http.DecisionProtocol`),
  with uvicorn running sockets, workers, signals and the lifespan;
- `granian`: the RSGI app; `uvicorn`: the ASGI app (both generic, for comparison).

SIGINT/SIGTERM stop accepting, finish in-flight requests, write the last usage counters
and exit. A worker that dies is replaced (granian's default would shut the whole server
down: tests/faults). With several workers, metrics are aggregated through a
PROMETHEUS_MULTIPROC_DIR (a temporary one unless set).
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import build
from .contracts import ENVOY_PREFIX
from .settings import ValidatorSettings

SERVERS = ("lean", "granian", "uvicorn")
# Granian puts its working_dir first on each worker's sys.path (the current directory by default): the
# directory holding token_service instead, so no file in the directory the server started from is imported.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Longer than the idle timeouts of gateways' upstream pools (nginx: 60 s), so that the
# gateway, not the validator, closes an idle connection and never reuses a closing one.
KEEP_ALIVE = 75


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {"_granian": {"level": "WARNING"}, "granian.access": {"level": "WARNING"}},
    }


def run(host: str, port: int, workers: int, server_kind: str, log_level: str) -> None:
    """Serve until SIGINT/SIGTERM; settings come from MLTOKENS_CONFIG and the environment."""
    settings = ValidatorSettings.load()
    logging.config.dictConfig(log_config(log_level))
    own_metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mltokens-metrics-")
    logging.getLogger("token_service.validator").info(
        "validator on http://%s:%d, %d worker(s), %s; issuers %s",
        host,
        port,
        workers,
        server_kind,
        ", ".join(settings.issuers),
    )
    if server_kind == "granian":
        logging.getLogger("token_service.validator").warning(
            "granian gives an RSGI app no raw request path: the Envoy prefix contract (%s/<path>) is refused "
            "(503 unsupported_contract); behind Envoy, serve with lean or uvicorn",
            ENVOY_PREFIX,
        )
    # which hot modules run compiled (docs/validator.md, "The compiled build"); pure Python is the fallback
    logging.getLogger("token_service.validator").info("validator build: %s", build.summary())
    try:
        if server_kind == "granian":
            from granian import Granian
            from granian.constants import Interfaces, Loops

            # The app named by its file: granian resolves a dotted target against the current directory
            # and puts that directory first on sys.path; a file path puts PACKAGE_ROOT there instead.
            Granian(
                f"{Path(__file__).with_name('app.py')}:rsgi",
                address=host,
                port=port,
                interface=Interfaces.RSGI,
                workers=workers,
                loop=Loops.uvloop,
                factory=True,
                log_dictconfig=log_config(log_level),
                workers_kill_timeout=10,
                respawn_failed_workers=True,
                respawn_interval=0.5,
                working_dir=PACKAGE_ROOT,
            ).serve()
        else:
            import uvicorn

            protocol = "token_service.validator.protocol:DecisionProtocol" if server_kind == "lean" else "httptools"
            uvicorn.run(
                "token_service.validator.app:asgi",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                loop="uvloop",
                http=protocol,
                lifespan="on",
                access_log=False,
                proxy_headers=False,
                log_config=log_config(log_level),
                timeout_graceful_shutdown=10,
                timeout_keep_alive=KEEP_ALIVE,
            )
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m token_service.validator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=SERVERS, default=SERVERS[0])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO")
    args = parser.parse_args(argv)
    run(args.host, args.port, args.workers, args.server, args.log_level)
