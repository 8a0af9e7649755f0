"""`ckan mltokens init|list|revoke|revoke-all|prune`, run through CKAN's real CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from ckan.cli.cli import ckan
from ckanext.mltokens import service
from sqlalchemy import text

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")


def run(cli: Any, *args: str) -> str:
    result = cli.invoke(ckan, ["mltokens", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_init_is_idempotent_and_keeps_ckans_alembic_version_apart(cli: Any) -> None:
    assert "token store at revision" in run(cli, "init")
    assert "new signing key" not in run(cli, "init")
    with service.lifecycle().store.engine.connect() as conn:
        ours = conn.execute(text("SELECT version_num FROM mltokens.alembic_version")).scalar()
        ckans = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar()
    assert ours and ckans and ours != ckans


def test_list_all_one_user_active_only_and_json(cli: Any, user: dict, other_user: dict, token_of: Callable) -> None:
    mine = token_of(user, name="mine")
    gone = token_of(user, name="gone")
    theirs = token_of(other_user, name="theirs")
    service.lifecycle().revoke(gone["id"], service.Actor.operator())

    everything = run(cli, "list")
    assert {mine["id"], gone["id"], theirs["id"]} <= set(everything.split())
    by_user = run(cli, "list", "--user", user["name"], "--active")
    assert mine["id"] in by_user and gone["id"] not in by_user and theirs["id"] not in by_user
    listed = json.loads(run(cli, "list", "--user", other_user["id"], "--json"))
    assert [t["id"] for t in listed] == [theirs["id"]]
    assert "token" not in listed[0]


def test_revoke_one_and_revoke_all_of_a_user(cli: Any, user: dict, other_user: dict, token_of: Callable) -> None:
    one = token_of(user, name="one")
    token_of(user, name="two")
    theirs = token_of(other_user, name="theirs")

    assert "revoked " + one["id"] in run(cli, "revoke", one["id"], "--reason", "leaked")
    shown = service.lifecycle().show(one["id"], service.Actor.operator())
    assert (shown.status, shown.revoke_reason, shown.revoked_by) == ("revoked", "leaked", "operator")

    assert "1 token(s) revoked" in run(cli, "revoke-all", user["name"])
    statuses = {t.name: t.status for t in service.lifecycle().list(service.Actor.operator())}
    assert statuses == {"one": "revoked", "two": "revoked", "theirs": "active"}
    assert theirs["id"]


def test_revoke_errors_are_one_line_and_exit_1(cli: Any, user: dict, token_of: Callable) -> None:
    token = token_of(user)
    run(cli, "revoke", token["id"])
    again = cli.invoke(ckan, ["mltokens", "revoke", token["id"]])
    assert again.exit_code == 1 and "This token is already revoked." in again.output
    unknown = cli.invoke(ckan, ["mltokens", "revoke", "00000000-0000-0000-0000-000000000000"])
    assert unknown.exit_code == 1 and "Token not found." in unknown.output


def test_revoke_all_by_id_of_a_user_no_longer_in_ckan(cli: Any) -> None:
    from token_service.issuers import Owner

    ghost = Owner("5b1c0d9e-0000-4000-8000-00000000dead", "purged-user")
    issued = service.lifecycle().create(
        ghost, "left behind", ["model:sentiment:predict"], actor=service.Actor.operator()
    )
    assert "1 token(s) revoked" in run(cli, "revoke-all", ghost.id)
    assert service.lifecycle().show(issued.info.id, service.Actor.operator()).status == "revoked"


def test_prune_drops_expired_revocations(cli: Any, user: dict, token_of: Callable) -> None:
    token = token_of(user, ttl="1m")
    service.lifecycle().revoke(token["id"], service.Actor.operator())
    with service.lifecycle().store.transaction() as s:
        s.execute(text("UPDATE mltokens.revocation SET expires_at = now() - interval '1 minute'"))
    assert "pruned 1 revocation(s)" in run(cli, "prune")
    assert "pruned 0 revocation(s)" in run(cli, "prune")
