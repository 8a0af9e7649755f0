"""`mltokens serve`: run the validator under granian (RSGI, the default) or uvicorn (ASGI).

Settings are checked before any worker starts; workers read them again from the same
file and environment. SIGINT/SIGTERM stop accepting, finish in-flight requests, write
the last usage counters and exit. With several workers, metrics are aggregated through
a PROMETHEUS_MULTIPROC_DIR (a temporary one unless set).
"""
from __future__ import annotations

import json
import logging
import logging.config
import os
import shutil
import tempfile
from typing import Any

import click

from .policy import Policy
from .settings import ValidatorSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage(), "pid": record.process}
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


@click.command("serve")
@click.option("--host", help="Address to listen on (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default from settings: 8902).")
@click.option("--workers", type=int, help="Worker processes (default from settings: 1).")
@click.option("--server", "server_kind", type=click.Choice(["granian", "uvicorn"]), default="granian",
              show_default=True, help="HTTP server; granian serves RSGI, uvicorn ASGI.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None, server_kind: str,
          log_level: str) -> None:
    """Run the gateway-facing validator (Envoy ext_authz, nginx auth_request, forward auth)."""
    config_path = getattr(ctx.find_root().obj, "config_path", None)
    if config_path:
        os.environ["MLTOKENS_CONFIG"] = os.path.abspath(config_path)
    settings = ValidatorSettings.load(config_path)
    Policy.load(settings.policy_file)
    host, port, workers = host or settings.host, port or settings.port, workers or settings.workers
    logging.config.dictConfig(log_config(log_level))
    own_metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mltokens-metrics-")
    logging.getLogger("token_service.validator").info(
        "validator on http://%s:%d, %d worker(s), %s; issuers %s", host, port, workers, server_kind,
        ", ".join(settings.issuers))
    try:
        if server_kind == "granian":
            from granian import Granian
            from granian.constants import Interfaces, Loops

            Granian("token_service.validator.app:rsgi", address=host, port=port, interface=Interfaces.RSGI,
                    workers=workers, loop=Loops.uvloop, factory=True, log_dictconfig=log_config(log_level),
                    workers_kill_timeout=10).serve()
        else:
            import uvicorn

            uvicorn.run("token_service.validator.app:asgi", factory=True, host=host, port=port, workers=workers,
                        loop="uvloop", http="httptools", lifespan="on", access_log=False,
                        log_config=log_config(log_level), timeout_graceful_shutdown=10)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
