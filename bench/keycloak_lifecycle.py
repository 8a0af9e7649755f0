"""Create, renew and revoke through the real Keycloak: p50/p95 over N tokens.

    python -m bench.keycloak_lifecycle [--tokens 50]

Starts the real Keycloak of `.ci/install` (testing/real_keycloak.py), or uses the one at
MLTOKENS_TEST_REAL_KEYCLOAK_URL (admin/admin), bootstraps a fresh realm, and times each
lifecycle call on a database of its own. Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from testing.real_keycloak import EXTERNAL_URL_VAR, RealKeycloak, server_info
from tests.support import pg
from token_service.config import Settings
from token_service.issuers import Owner
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import admin_secret, bootstrap
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

ROLE = "model:sentiment:predict"


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return f"p50 {statistics.median(samples) * 1000:6.0f} ms   p95 {cuts[18] * 1000:6.0f} ms"


def timed(samples: list[float], call: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = call()
    samples.append(time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50)
    args = parser.parse_args()
    server = None
    if os.environ.get(EXTERNAL_URL_VAR):
        info = server_info(os.environ[EXTERNAL_URL_VAR].rstrip("/"), "admin", "admin")
    else:
        server = RealKeycloak.start(Path(tempfile.mkdtemp(prefix="bench-keycloak-")))
        info = server.info()
    realm = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        with pg.database(prefix="mlt_bench") as db_url:
            Store(db_url).upgrade()
            base = Settings.from_mapping(
                {
                    "database_url": db_url,
                    "issuer": "keycloak",
                    "issuer_url": f"{info.public_url}/realms/{realm}",
                    "keycloak_server_url": info.url,
                    "keycloak_realm": realm,
                    "keycloak_admin_username": "admin",
                    "keycloak_admin_password": "admin",
                    "max_tokens_per_owner": 1000,
                    "max_creations_per_hour": 100000,
                }
            )
            admin = info.admin()
            bootstrap(admin, base, (ROLE,))
            settings = base.replace(
                keycloak_admin_username="",
                keycloak_admin_password="",
                keycloak_admin_client_secret=admin_secret(admin, base),
            )
            user = admin.create_user({"username": "alice", "enabled": True})
            admin.assign_realm_roles(user, [admin.get_realm_role(ROLE)])
            store = Store(db_url)
            lifecycle = Lifecycle(settings, store, KeycloakIssuer(settings, utcnow), utcnow)
            owner, actor = Owner("u-alice", "alice"), Actor("u-alice", "alice")
            creates: list[float] = []
            renews: list[float] = []
            revokes: list[float] = []
            ids = [
                timed(creates, lambda i=i: lifecycle.create(owner, f"t{i}", [ROLE], timedelta(hours=1))).info.id
                for i in range(args.tokens)
            ]
            for token_id in ids:
                timed(renews, lambda t=token_id: lifecycle.renew(t, actor, timedelta(hours=2)))
            for token_id in ids:
                timed(revokes, lambda t=token_id: lifecycle.revoke(t, actor))
            store.dispose()
            admin.change_current_realm("master")
            admin.delete_realm(realm)
        print(f"{args.tokens} tokens through Keycloak at {info.url}")
        for name, samples in (("create", creates), ("renew", renews), ("revoke", revokes)):
            print(f"  {name:7} {percentiles(samples)}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
