"""Validator fixtures: a local issuer published over real HTTP, keys, revocations, a decider."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import deployment  # noqa: F401  (real processes, for test_revocation_feed)
from tests.support import pg
from tests.support.clock import Clock
from tests.support.stack import Running, free_port, issuer_spec, mltokens, start, validator_spec, write_config
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.issuers.local_http import make_server
from token_service.lifecycle import Lifecycle, utcnow
from token_service.store import Store
from token_service.validator.decision import Decider
from token_service.validator.jwks import KeyCache
from token_service.validator.policy import Policy
from token_service.validator.revocations import RevocationSet
from token_service.validator.settings import ValidatorSettings

DEMO_POLICY = Path(__file__).resolve().parents[2] / "devstack" / "policy.yaml"
SERVERS = ("lean", "granian", "uvicorn")
INTROSPECTION_SECRET = "introspection-secret-0123456789"


@dataclasses.dataclass
class Served:
    """`mltokens serve` once per HTTP server (`SERVERS`) and the issuer, sharing one configuration."""

    config: Path
    ports: dict[str, int]
    validators: dict[str, Running]

    def lifecycle(self) -> Lifecycle:
        """A lifecycle on the served database and issuer keys (dispose of its store when done)."""
        settings = Settings.load(self.config, env={})
        store = Store(settings.database_url)
        return Lifecycle(settings, store, LocalIssuer(settings, store, utcnow))


@pytest.fixture(scope="module")
def served(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The issuer and one `mltokens serve` per HTTP server, as real processes on one database."""
    tmp = tmp_path_factory.mktemp("served")
    with pg.database(template=migrated_template) as db_url:
        issuer_port = free_port()
        config = write_config(
            tmp / "m.toml",
            db_url,
            f"http://127.0.0.1:{issuer_port}",
            DEMO_POLICY,
            heartbeat_interval="200ms",
            max_staleness="3s",
            introspection_secret=INTROSPECTION_SECRET,
        )
        subprocess.run(mltokens(config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
        running = [start(issuer_spec(config, issuer_port), tmp / "logs")]
        ports, validators = {}, {}
        try:
            for server in SERVERS:
                ports[server] = free_port()
                spec = validator_spec(config, ports[server], name=f"validator-{server}", server=server)
                validators[server] = start(spec, tmp / "logs", timeout=30)
                running.append(validators[server])
            yield Served(config, ports, validators)
        finally:
            for r in reversed(running):
                r.stop()


@pytest.fixture
def issuer_port() -> int:
    return free_port()


@pytest.fixture
def served_settings(settings: Settings, issuer_port: int) -> Settings:
    """Core settings whose issuer URL is a real local HTTP server."""
    return settings.replace(issuer_url=f"http://127.0.0.1:{issuer_port}")


@pytest.fixture
def served_issuer(served_settings: Settings, store: Store, clock: Clock, issuer_port: int) -> Iterator[LocalIssuer]:
    """A LocalIssuer with a key, its discovery document and JWKS served on 127.0.0.1."""
    issuer = LocalIssuer(served_settings, store, clock)
    issuer.keys.rotate(clock())
    with serving(issuer, issuer_port):
        yield issuer


@contextlib.contextmanager
def serving(issuer: LocalIssuer, port: int) -> Iterator[None]:
    """The issuer's discovery document and JWKS served on 127.0.0.1:port meanwhile."""
    server = make_server(issuer, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served_lifecycle(served_settings: Settings, store: Store, served_issuer: LocalIssuer, clock: Clock) -> Lifecycle:
    return Lifecycle(served_settings, store, served_issuer, clock)


@pytest.fixture
def vsettings(served_settings: Settings) -> ValidatorSettings:
    return ValidatorSettings.from_mapping(
        {
            "policy_file": str(DEMO_POLICY),
            "jwks_min_refetch_interval": "30s",
            "heartbeat_interval": "200ms",
            "max_staleness": "3s",
        },
        served_settings,
    )


@pytest.fixture
def key_cache(vsettings: ValidatorSettings, served_issuer: LocalIssuer) -> KeyCache:
    cache = KeyCache(
        vsettings.issuers, vsettings.jwks_refresh_interval, vsettings.jwks_min_refetch_interval, vsettings.jwks_timeout
    )
    assert asyncio.run(cache.refresh(vsettings.issuers[0]))
    return cache


@pytest.fixture
def revocations() -> RevocationSet:
    revs = RevocationSet()
    revs.replace([], time.time())
    revs.confirmed_at = time.monotonic()
    return revs


@pytest.fixture
def decider(vsettings: ValidatorSettings, key_cache: KeyCache, revocations: RevocationSet, clock: Clock) -> Decider:
    return Decider(vsettings, key_cache, revocations, Policy.load(DEMO_POLICY), wall=lambda: clock().timestamp())
