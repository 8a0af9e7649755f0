"""`ckan mltokens ...`: set up the token store and manage tokens as an operator."""

from __future__ import annotations

import json

import ckan.model as model
import click

from token_service.errors import TokenServiceError
from token_service.lifecycle import Actor, TokenInfo

from . import access, service
from . import notify as notices

__all__ = ["mltokens"]


def _operator() -> Actor:
    return Actor.operator("ckan cli")


def _owner_id(user: str) -> str:
    """A CKAN user's id from its name or id; an unknown value is taken as an owner id (e.g. a purged user)."""
    found = model.User.get(user)
    return found.id if found else user


def _line(token: TokenInfo) -> str:
    return (
        f"{token.id}  {token.status:8}  {token.owner_name:20}  {token.name:24}  "
        f"expires {token.expires_at:%Y-%m-%d %H:%M}Z  {' '.join(token.roles)}"
    )


class _Group(click.Group):
    """Shows token_service errors as one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except TokenServiceError as exc:
            raise click.ClickException(exc.message) from exc


@click.group(cls=_Group, short_help="ML API tokens: set up the store, list, revoke, prune, notify.")
def mltokens() -> None:
    """ML API tokens (ckanext-mltokens)."""


@mltokens.command()
def init() -> None:
    """Create or upgrade the token tables (schema `mltokens`); give the local issuer a signing key."""
    lifecycle = service.lifecycle()
    lifecycle.store.upgrade()
    click.echo(f"token store at revision {lifecycle.store.revision()}")
    keys = getattr(lifecycle.issuer, "keys", None)
    if keys is not None and not any(k.retired_at is None for k in keys.list()):
        info = keys.rotate(lifecycle.clock())
        click.echo(f"new signing key {info.kid}")


@mltokens.command("list")
@click.option("--user", help="Only this user's tokens (name or id).")
@click.option("--active", is_flag=True, help="Only tokens that are neither revoked nor expired.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(user: str | None, active: bool, as_json: bool) -> None:
    """List tokens, newest first."""
    tokens = service.lifecycle().list(_operator(), _owner_id(user) if user else None, include_inactive=not active)
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in tokens], indent=2))
        return
    for token in tokens:
        click.echo(_line(token))
    if not tokens:
        click.echo("no tokens", err=True)


@mltokens.command()
@click.argument("token_id")
@click.option("--reason", help="Kept with the revocation.")
def revoke(token_id: str, reason: str | None) -> None:
    """Revoke one token by id."""
    token = service.lifecycle().revoke(token_id, _operator(), reason)
    click.echo(f"revoked {_line(token)}")


@mltokens.command("revoke-all")
@click.argument("user")
@click.option("--reason", help="Kept with the revocations.")
def revoke_all(user: str, reason: str | None) -> None:
    """Revoke every active token of USER (name or id)."""
    tokens = service.lifecycle().revoke_all(_owner_id(user), _operator(), reason)
    for token in tokens:
        click.echo(f"revoked {_line(token)}")
    click.echo(f"{len(tokens)} token(s) revoked")


@mltokens.command("leak-notices")
def leak_notices() -> None:
    """Mail the owners of tokens reported found (leaked) and revoked; once each, safe to run often (cron)."""
    from .leaks import send_notices

    click.echo(f"{send_notices()} leak notice(s) sent")


@mltokens.command()
def prune() -> None:
    """Delete expired revocations, tokens past retention, old audit events and unused keys."""
    report = service.lifecycle().prune()
    click.echo(
        f"pruned {report.revocations} revocation(s), {report.tokens} token(s), "
        f"{report.audit_events} audit event(s), {report.issuer_items} issuer item(s), "
        f"{report.usage_days} day(s) of usage counts"
    )


@mltokens.command()
@click.option("--dry-run", is_flag=True, help="Only print the tokens that would be revoked.")
def reconcile(dry_run: bool) -> None:
    """Revoke the active tokens holding a role their owner may no longer grant in CKAN.

    For access changed outside CKAN's actions (SQL, a database restore, `ckan sysadmin remove`).
    Safe to run from cron: idempotent; CKAN is asked once per model and standing of its owners
    (docs/catalogue-access.md, "Cost model"), and the revocations commit together.
    """
    if not access.follows_ckan():
        click.echo("access_mode is issuer: CKAN does not bound the roles, nothing to reconcile")
        return
    tokens = service.lifecycle().list(_operator(), None, include_inactive=False)
    revoked = access.revoke_lost(tokens, "ckan mltokens reconcile", dry_run=dry_run)
    for item in revoked:
        click.echo(
            f"{'would revoke' if dry_run else 'revoked'} {item.token.id} ({item.token.owner_name}): {item.reason}"
        )
    click.echo(f"{len(tokens)} active token(s) checked, {len(revoked)} {'would be ' if dry_run else ''}revoked")


@mltokens.command()
def notify() -> None:
    """E-mail expiry warnings that are due (ckanext.mltokens.expiry_notices), each once.

    Safe to run every minute, and on several machines at once: each warning is claimed in the
    token store before it is sent. Exit status 1 when a warning could not be sent (retried next run).
    """
    report = notices.send_expiry_notices(service.lifecycle(), notices.expiry_leads())
    click.echo(
        f"sent {report.sent} expiry warning(s), {report.skipped} already sent or undeliverable, {report.failed} failed"
    )
    if report.failed:
        raise click.exceptions.Exit(1)
