"""A dataset edit's added latency with N active tokens for its model (docs/catalogue-access.md).

    .venv/bin/python -m bench.catalogue_edit [--tokens 1000] [--rounds 20]

Runs inside CKAN's test harness (tests/ckan/conftest.py: a database of its own, a real Solr,
CKAN's app), so the edits are real `package_patch` calls with Solr indexing. An organization
publishes one model; N members each hold an active token for it. Each kind of edit is timed
with `access_mode = issuer` (the plugin's hooks step aside: CKAN's own cost) and `ckan` (the
hooks run); the difference is the added latency. Results go to docs/catalogue-access.md by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

TOKENS_VAR, ROUNDS_VAR = "BENCH_CATALOGUE_TOKENS", "BENCH_CATALOGUE_ROUNDS"


def _stats(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples) * 1000, cuts[18] * 1000


def _timed(rounds: int, edit: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        edit(i)
        samples.append(time.perf_counter() - started)
    return samples


@pytest.mark.usefixtures("with_plugins", "non_clean_db", "mltokens_store")
def test_dataset_edit_latency(ckan_config: Any) -> None:
    from ckan import model
    from ckan.tests import factories
    from ckan.tests.helpers import call_action
    from ckanext.mltokens import service

    from token_service.issuers import Owner

    tokens, rounds = int(os.environ.get(TOKENS_VAR, "1000")), int(os.environ.get(ROUNDS_VAR, "20"))
    ckan_config["ckanext.mltokens.access_mode"] = "ckan"
    org = factories.Organization()
    model_id = f"bench-{uuid.uuid4().hex[:8]}"
    extras = [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": "predict, train"}]
    dataset = factories.Dataset(owner_org=org["id"], extras=extras)
    role = f"model:{model_id}:predict"

    # Users written directly (factories.User hashes a password each: minutes for 1,000); their
    # membership through CKAN's action, as a site makes it.
    names = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(tokens)]
    users = [model.User(name=name, email=f"{name}@example.org") for name in names]
    model.Session.add_all(users)
    model.Session.commit()
    for user in users:
        call_action("organization_member_create", id=org["id"], username=user.name, role="member")
    lifecycle = service.lifecycle()
    for user in users:
        lifecycle.create(Owner(user.id, user.name), "bench", [role], grantable=[role])
    assert len(lifecycle.active_reaching([model_id])) == tokens

    edits: dict[str, Callable[[int], object]] = {
        "ordinary edit (notes)": lambda i: call_action("package_patch", id=dataset["id"], notes=f"edit {i}"),
        "access edit (private on/off; every token judged, none lost)": lambda i: call_action(
            "package_patch", id=dataset["id"], private=i % 2 == 0
        ),
    }
    print(f"\n{tokens} active tokens for the dataset's model, {rounds} edits each (package_patch, with Solr)")
    print(f"{'edit':62} {'mode':7} {'p50 ms':>8} {'p95 ms':>8}")
    for name, edit in edits.items():
        medians = {}
        for mode in ("issuer", "ckan"):
            ckan_config["ckanext.mltokens.access_mode"] = mode
            edit(rounds)  # warm-up
            p50, p95 = _stats(_timed(rounds, edit))
            medians[mode] = p50
            print(f"{name:62} {mode:7} {p50:8.1f} {p95:8.1f}")
        print(f"{'':62} {'added':7} {medians['ckan'] - medians['issuer']:8.1f}")
    assert len(lifecycle.active_reaching([model_id])) == tokens  # members keep access: nothing revoked

    # The other extreme: every owner loses access. Their memberships end outside CKAN's actions
    # (no hook runs), then one edit makes the dataset private and revokes all N tokens.
    ckan_config["ckanext.mltokens.access_mode"] = "issuer"
    call_action("package_patch", id=dataset["id"], private=False)
    model.Session.query(model.Member).filter(
        model.Member.group_id == org["id"], model.Member.table_id.in_([u.id for u in users])
    ).update({"state": "deleted"}, synchronize_session=False)
    model.Session.commit()
    ckan_config["ckanext.mltokens.access_mode"] = "ckan"
    [seconds] = _timed(1, lambda i: call_action("package_patch", id=dataset["id"], private=True))
    assert lifecycle.active_reaching([model_id]) == []
    print(f"{'access edit (made private; all ' + str(tokens) + ' tokens revoked)':62} {'ckan':7} {seconds * 1000:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    os.environ[TOKENS_VAR], os.environ[ROUNDS_VAR] = str(args.tokens), str(args.rounds)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.exit(
        pytest.main(
            [
                f"{os.path.abspath(__file__)}::test_dataset_edit_latency",
                f"--ckan-ini={root}/tests/ckan/test.ini",
                "-p",
                "tests.ckan.conftest",
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                "--timeout=0",  # 1,000 tokens judged per access edit: minutes in all
            ]
        )
    )


if __name__ == "__main__":
    main()
