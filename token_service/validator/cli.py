"""`mltokens serve` and `mltokens proxy`: check the validator's settings, then exec the server process."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys

import click

from .policy import Policy
from .server import SERVERS
from .settings import ENV_PREFIX, ValidatorSettings


def missing_extra(extra: str = "validator") -> list[str]:
    """The distributions of an extra of mltokens that are not installed (none when mltokens itself is
    not installed, e.g. run from a source tree)."""
    try:
        requires = importlib.metadata.requires("mltokens") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requires:
        if re.search(rf"""extra\s*==\s*["']{extra}["']""", requirement):
            name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(name)
    return missing


@click.command("serve")
@click.option("--host", help="Address to listen on (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default from settings: 8902).")
@click.option("--workers", type=int, help="Worker processes (default from settings: 1).")
@click.option(
    "--server",
    "server_kind",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    help="HTTP server: lean (the validator's own HTTP/1.1 protocol, run by uvicorn), granian (RSGI) or uvicorn (ASGI).",
)
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, workers: int | None, server_kind: str, log_level: str
) -> None:
    """Run the gateway-facing validator (Envoy ext_authz, nginx auth_request, forward auth)."""
    settings, config_path = _checked_settings(ctx)
    host, port, workers = host or settings.host, port or settings.port, workers or settings.workers
    # The workers read their settings again: what the command line chose must win there too
    # (the gRPC server listens on `host`, and `grpc_port` must differ from `port`).
    os.environ[ENV_PREFIX + "HOST"], os.environ[ENV_PREFIX + "PORT"] = host, str(port)
    ValidatorSettings.load(config_path)
    # -P: the working directory is not put first on sys.path, so a file there named like a module the
    # validator imports (jwt.py, asyncpg.py, ...) is never imported; spawned workers inherit the flag.
    argv = [
        sys.executable,
        "-P",
        "-m",
        "token_service.validator",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--server",
        server_kind,
        "--log-level",
        log_level,
    ]
    _exec(argv)


def _checked_settings(ctx: click.Context) -> tuple[ValidatorSettings, str | None]:
    """The validator's settings and policy, checked here so that a mistake is reported before the exec."""
    missing = missing_extra()
    if missing:
        raise click.ClickException(
            f"the validator is not installed here (missing: {', '.join(missing)}); "
            "install it with: pip install 'mltokens[validator]'"
        )
    config_path = getattr(ctx.find_root().obj, "config_path", None)
    if config_path:
        os.environ["MLTOKENS_CONFIG"] = os.path.abspath(config_path)
    settings = ValidatorSettings.load(config_path)
    Policy.load(settings.policy_file)
    return settings, config_path


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@click.command("proxy")
@click.option(
    "--upstream",
    help="The model API to forward allowed requests to, e.g. http://model:8000 (default from settings: upstream).",
)
@click.option("--host", help="Address to listen on (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default from settings: proxy_port, 8904).")
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@click.pass_context
def proxy(ctx: click.Context, upstream: str | None, host: str | None, port: int | None, log_level: str) -> None:
    """Run the validator inline in front of one model API: decide on each request, forward the allowed ones.

    The same settings, policy and decision as `serve`; bodies stream both ways, WebSockets pass on routes with
    `websocket: true` (docs/validator.md, "Proxy mode").
    """
    settings, _ = _checked_settings(ctx)
    upstream = upstream or settings.upstream
    if not upstream.startswith(("http://", "https://")) or "?" in upstream or "#" in upstream:
        raise click.ClickException("--upstream: give the model API's http(s) URL, e.g. http://model:8000")
    host, port = host or settings.host, port or settings.proxy_port
    argv = [sys.executable, "-P", "-m", "token_service.validator.proxy", "--host", host, "--port", str(port)]
    _exec([*argv, "--upstream", upstream, "--log-level", log_level])
