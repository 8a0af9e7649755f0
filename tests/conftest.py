"""Fixtures shared by every test: real PostgreSQL databases, settings, store, issuer, lifecycle,
and the two Keycloaks (`standin_keycloak_server`, `real_keycloak_server`): registered here
once, since a session fixture imported into two modules would be two fixtures and start
two servers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis
import pytest

from testing.keycloak_server.fixtures import keycloak_server as standin_keycloak_server  # noqa: F401
from testing.real_keycloak import real_keycloak_server  # noqa: F401
from tests.support import pg
from tests.support.clock import Clock
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Lifecycle
from token_service.store import Store

PASSPHRASE = "test-passphrase"


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """A database at the newest migration, used as the template for per-test databases."""
    with pg.database(prefix="mlt_tmpl") as template_url:
        store = Store(template_url)
        store.upgrade()
        store.dispose()
        yield template_url.rsplit("/", 1)[1]


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    with pg.database() as db_url:
        yield db_url


@pytest.fixture
def db_url(migrated_template: str) -> Iterator[str]:
    with pg.database(template=migrated_template) as db_url:
        yield db_url


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings.from_mapping(
        {
            "database_url": db_url,
            "issuer_url": "http://issuer.test/local",
            "key_passphrase": PASSPHRASE,
            "max_tokens_per_owner": 3,
        }
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings.database_url)
    yield store
    store.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(settings: Settings, store: Store, clock: Clock) -> LocalIssuer:
    issuer = LocalIssuer(settings, store, clock)
    issuer.keys.rotate(clock())
    return issuer


@pytest.fixture
def lifecycle(settings: Settings, store: Store, issuer: LocalIssuer, clock: Clock) -> Lifecycle:
    return Lifecycle(settings, store, issuer, clock)


# Property tests try the same examples on every run (no test goes red by chance in CI);
# `HYPOTHESIS_PROFILE=explore` searches afresh locally: pin what it finds as examples.
hypothesis.settings.register_profile("default", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
