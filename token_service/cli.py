"""`mltokens`: operate the token store, the keys and tokens from a shell.

The store (SQLAlchemy, Alembic), the issuers and the lifecycle are imported by the
commands that use them, so `--help`, `--version`, `config` and `serve` start fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from .config import CKAN_OPTION_PREFIX, ENV_PREFIX, Settings, parse_duration
from .errors import ConfigError, StoreUnavailable, TokenServiceError
from .validator.cli import proxy, serve

if TYPE_CHECKING:
    from .issuers import Issuer, Owner
    from .lifecycle import Actor, IssuedToken, Lifecycle, TokenInfo
    from .store import Store


@dataclass
class Context:
    config_path: str | None

    @cached_property
    def settings(self) -> Settings:
        return Settings.load(self.config_path)

    def settings_with(self, **overrides: str) -> Settings:
        """The settings with some replaced before they are checked (e.g. credentials given as options)."""
        return Settings.from_mapping(Settings.read(self.config_path, os.environ) | overrides)

    @cached_property
    def store(self) -> Store:
        from .store import Store

        return Store(self.settings.database_url)

    @cached_property
    def issuer(self) -> Issuer:
        from .issuers import make_issuer
        from .lifecycle import utcnow

        return make_issuer(self.settings, self.store, utcnow)

    @cached_property
    def lifecycle(self) -> Lifecycle:
        from .lifecycle import Lifecycle

        return Lifecycle(self.settings, self.store, self.issuer)


def _database_error(exc: BaseException, ctx: click.Context) -> str | None:
    """The cause of a database failure in one line, when `exc` is one (else None)."""
    if "sqlalchemy" not in sys.modules:  # no store was used: not a database failure
        return None
    from .store.db import explain

    obj = ctx.find_root().obj
    settings = obj.__dict__.get("settings") if isinstance(obj, Context) else None
    return explain(exc, settings.database_url if settings else None)


JSON_OUTPUT = "mltokens.json"  # ctx.meta key: the command was asked for JSON


def _json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[JSON_OUTPUT] = value  # meta is shared by every context of the invocation
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_json_flag,
    help="Print JSON (an error too: its code, message and field).",
)


class JsonError(click.ClickException):
    """A service error under `--json`: `{"error": {"code", "message", "field"}}` on stdout, exit status 1."""

    def __init__(self, message: str, code: str, field: str | None) -> None:
        super().__init__(message)
        self.code, self.field = code, field

    def show(self, file: Any = None) -> None:
        error = {"code": self.code, "message": self.message, "field": self.field}
        click.echo(json.dumps({"error": error}, indent=2))


def _failure(ctx: click.Context, message: str, error: TokenServiceError) -> click.ClickException:
    """One line on stderr; under `--json`, JSON with the error's code on stdout."""
    if ctx.meta.get(JSON_OUTPUT):
        return JsonError(message, error.code, error.field)
    return click.ClickException(message)


class Group(click.Group):
    """Turns the service's typed errors and database failures into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise _failure(ctx, f"configuration error: {exc.message}", exc) from exc
        except StoreUnavailable as exc:
            raise _failure(ctx, _database_error(exc, ctx) or exc.message, exc) from exc
        except TokenServiceError as exc:
            raise _failure(ctx, exc.message, exc) from exc
        except click.ClickException:
            raise
        except Exception as exc:
            message = _database_error(exc, ctx)
            if message is None:
                raise
            raise _failure(ctx, message, StoreUnavailable(message)) from exc


def _owner(owner_id: str, name: str) -> Owner:
    from .issuers import Owner

    return Owner(owner_id, name)


def _operator() -> Actor:
    from .lifecycle import Actor

    return Actor.operator()


def _now() -> datetime:
    from .lifecycle import utcnow

    return utcnow()


pass_ctx = click.make_pass_decorator(Context)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_duration(value, "ttl")
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _print_token(info: TokenInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    for key, value in info.as_dict().items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        click.echo(f"{key:>14}: {value if value is not None else '-'}")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mltokens", prog_name="mltokens")
@click.option(
    "--config",
    "config_path",
    envvar="MLTOKENS_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML settings file (or MLTOKENS_CONFIG). MLTOKENS_* variables override it.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """ML API tokens: store, keys, tokens, checks."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = Context(config_path)


# -- config ------------------------------------------------------------------------


@main.command("config")
@pass_ctx
def config_show(c: Context) -> None:
    """Show every setting, its environment variable and current value (secrets masked)."""
    for env, value, doc in c.settings.describe():
        click.echo(f"{env}={value}\n    {doc}")


# -- db ----------------------------------------------------------------------------


@main.group(cls=Group)
def db() -> None:
    """Database schema (schema `mltokens`, its own Alembic history)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(c: Context, revision: str) -> None:
    """Create or upgrade the token store's tables."""
    c.store.upgrade(revision)
    click.echo(f"database at revision {c.store.revision()}")


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True, help="`base` removes every mltokens table.")
@click.confirmation_option(prompt="This drops token store data. Continue?")
@pass_ctx
def db_downgrade(c: Context, revision: str) -> None:
    """Downgrade the token store's tables (default: remove them)."""
    c.store.downgrade(revision)
    click.echo(f"database at revision {c.store.revision() or 'base'}")


@db.command("current")
@pass_ctx
def db_current(c: Context) -> None:
    """Print the current schema revision."""
    click.echo(c.store.revision() or "base (no mltokens tables)")


# -- keys --------------------------------------------------------------------------


def _keyring(c: Context) -> Any:
    keys = getattr(c.issuer, "keys", None)
    if keys is None:
        raise click.ClickException(f"the {c.settings.issuer} issuer manages its keys itself")
    return keys


@main.group(cls=Group)
def keys() -> None:
    """Signing keys of the local issuer."""


@keys.command("rotate")
@pass_ctx
def keys_rotate(c: Context) -> None:
    """Make a new signing key; old keys keep verifying until their tokens expire."""
    info = _keyring(c).rotate(_now())
    click.echo(f"new signing key {info.kid} ({info.algorithm})")


@keys.command("list")
@pass_ctx
def keys_list(c: Context) -> None:
    """List keys: current, retired (still in the JWKS) or expired (to be pruned)."""
    now = _now()
    rows = _keyring(c).list()
    if not rows:
        click.echo("no signing keys; run `mltokens keys rotate`")
    for k in rows:
        click.echo(
            f"{k.kid}  {k.algorithm}  {k.state(now):8}  created {_when(k.created_at)}"
            f"  in JWKS until {_when(k.expires_at) if k.retired_at else 'rotated'}"
        )


# -- tokens ------------------------------------------------------------------------


@main.group(cls=Group)
def token() -> None:
    """Create, renew, revoke, list and show tokens as an operator."""


@token.command("create")
@click.option("--owner-id", required=True, help="The owner's user id (e.g. the CKAN user id).")
@click.option("--owner-name", help="The owner's user name (default: the id).")
@click.option("--name", required=True, help="A name the owner will recognise.")
@click.option("--role", "roles", multiple=True, required=True, help="A role to grant (repeat).")
@click.option("--ttl", callback=_duration, help="Lifetime, e.g. 30d or 12h (default from config).")
@click.option(
    "--kind",
    type=click.Choice(["access_token", "client_credentials"]),
    default="access_token",
    show_default=True,
    help="client_credentials (Keycloak only): a client id and secret instead.",
)
@click.option("--rate-limit", type=float, help="This token's own limit in requests per second.")
@click.option("--daily-quota", type=int, help="This token's own limit in requests per day.")
@json_option
@pass_ctx
def token_create(
    c: Context,
    owner_id: str,
    owner_name: str | None,
    name: str,
    roles: tuple[str, ...],
    ttl: Any,
    kind: str,
    rate_limit: float | None,
    daily_quota: int | None,
    as_json: bool,
) -> None:
    """Create a token; the token string is printed once and never stored."""
    issued = c.lifecycle.create(
        _owner(owner_id, owner_name or owner_id),
        name,
        roles,
        ttl,
        _operator(),
        kind=kind,
        rate_limit=rate_limit,
        daily_quota=daily_quota,
    )
    _print_issued(issued.info, issued.secret, as_json)


def _print_issued(info: TokenInfo, secret: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"token": secret, **info.as_dict()}, indent=2))
        return
    click.echo(f"token id {info.id}, expires {_when(info.expires_at)}", err=True)
    if info.kind == "client_credentials":
        click.echo(f"client id {info.client_id}; copy the client secret now, it cannot be shown again:", err=True)
    else:
        click.echo("Copy the token now; it is not stored and cannot be shown again:", err=True)
    click.echo(secret)


def _reissue_options(command: Callable[..., None]) -> Callable[..., None]:
    """The arguments renew and rotate share: TOKEN_ID, --ttl and --json."""
    ttl = click.option("--ttl", callback=_duration, help="New lifetime (default: the token's current one).")
    return click.argument("token_id")(ttl(json_option(pass_ctx(command))))


def _reissued(reissue: Callable[..., IssuedToken], token_id: str, ttl: Any, as_json: bool) -> TokenInfo:
    """Renew or rotate (`reissue`: that Lifecycle method) TOKEN_ID as the operator; print the new token string."""
    issued = reissue(token_id, _operator(), ttl)
    _print_issued(issued.info, issued.secret, as_json)
    return issued.info


@token.command("renew")
@_reissue_options
def token_renew(c: Context, token_id: str, ttl: Any, as_json: bool) -> None:
    """Issue a new token string for TOKEN_ID and revoke the old one."""
    _reissued(c.lifecycle.renew, token_id, ttl, as_json)


@token.command("rotate")
@_reissue_options
def token_rotate(c: Context, token_id: str, ttl: Any, as_json: bool) -> None:
    """Issue a new token string for TOKEN_ID; the old one keeps working for `rotate_grace`.

    For a program that picks up the new token on its own schedule (a Kubernetes Secret,
    docs/user-guide.md): put the new one in place before the old one stops.
    """
    info = _reissued(c.lifecycle.rotate, token_id, ttl, as_json)
    if not as_json and info.previous_valid_until:
        click.echo(f"the previous token string works until {_when(info.previous_valid_until)}", err=True)


@token.command("revoke")
@click.argument("token_id")
@click.option("--reason", help="Why (kept in the audit log).")
@pass_ctx
def token_revoke(c: Context, token_id: str, reason: str | None) -> None:
    """Revoke TOKEN_ID at once, at every validator."""
    info = c.lifecycle.revoke(token_id, _operator(), reason)
    click.echo(f"revoked {info.id} ({info.name}, owner {info.owner_name})")


@token.command("revoke-all")
@click.argument("owner_id")
@click.option("--reason", help="Why (kept in the audit log).")
@pass_ctx
def token_revoke_all(c: Context, owner_id: str, reason: str | None) -> None:
    """Revoke every active token of OWNER_ID."""
    infos = c.lifecycle.revoke_all(owner_id, _operator(), reason)
    click.echo(f"revoked {len(infos)} token(s) of {owner_id}")


@token.command("list")
@click.option("--owner-id", help="Only this owner's tokens.")
@click.option("--active", is_flag=True, help="Only active, unexpired tokens.")
@json_option
@pass_ctx
def token_list(c: Context, owner_id: str | None, active: bool, as_json: bool) -> None:
    """List tokens (never their strings)."""
    infos = c.lifecycle.list(_operator(), owner_id, include_inactive=not active)
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    for i in infos:
        click.echo(
            f"{i.id}  {i.status:8} {i.owner_name:16} {i.name:24} expires {_when(i.expires_at)}"
            f"  last used {_when(i.last_used_at)}  roles {','.join(i.roles)}"
        )


@token.command("show")
@click.argument("token_id")
@json_option
@pass_ctx
def token_show(c: Context, token_id: str, as_json: bool) -> None:
    """Show one token's metadata."""
    _print_token(c.lifecycle.show(token_id, _operator()), as_json)


# -- housekeeping ------------------------------------------------------------------


@main.command()
@pass_ctx
def prune(c: Context) -> None:
    """Remove expired revocations, tokens past retention, old audit events and expired keys."""
    r = c.lifecycle.prune()
    click.echo(
        f"pruned {r.revocations} revocation(s), {r.tokens} token(s), {r.audit_events} audit event(s), "
        f"{r.issuer_items} issuer item(s), {r.usage_days} day(s) of usage counts"
    )


@main.command()
@click.argument("token_string", metavar="TOKEN")
@pass_ctx
def check(c: Context, token_string: str) -> None:
    """Verify TOKEN (or - for stdin) against the issuer's keys and the revocation store.

    Exit status 0 when the token is valid, 1 when it is not.
    """
    from .verify import verify

    if token_string == "-":
        token_string = sys.stdin.read().strip()
    verdict = verify(token_string, c.settings, c.issuer.jwks(), c.store, issuer_url=c.issuer.issuer_url)
    for name, ok, detail in verdict.steps:
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if verdict.valid:
        claims = verdict.claims
        click.echo(
            f"VALID: token {claims.get(c.settings.token_id_claim)} of {claims.get('sub')}, "
            f"roles {claims.get(c.settings.roles_claim)}, expires "
            f"{datetime.utcfromtimestamp(claims['exp']).strftime('%Y-%m-%d %H:%M:%SZ')}"
        )
    else:
        click.echo(f"INVALID: {verdict.reason}")
        sys.exit(1)


@main.command()
@pass_ctx
def sync(c: Context) -> None:
    """Reconcile Keycloak with the store: retire dead token clients, revoke tokens of gone owners."""
    from .issuers.keycloak import KeycloakIssuer
    from .issuers.keycloak_sync import sync as run_sync

    if not isinstance(c.issuer, KeycloakIssuer):
        raise click.ClickException("sync is for the keycloak issuer; the local issuer has nothing to reconcile")
    report = run_sync(c.lifecycle, c.issuer)
    click.echo(f"deleted {report.clients_deleted} token client(s), revoked {report.tokens_revoked} token(s)")


@main.group(cls=Group)
def keycloak() -> None:
    """Set up Keycloak for the keycloak issuer."""


@keycloak.command("bootstrap")
@click.option(
    "--admin-username",
    envvar="MLTOKENS_KEYCLOAK_ADMIN_USERNAME",
    required=True,
    help="A Keycloak admin (e.g. of the master realm).",
)
@click.option(
    "--admin-password", envvar="MLTOKENS_KEYCLOAK_ADMIN_PASSWORD", required=True, prompt=True, hide_input=True
)
@click.option("--admin-realm", envvar="MLTOKENS_KEYCLOAK_ADMIN_REALM", default="master", show_default=True)
@click.option("--role", "roles", multiple=True, help="Example model role to create (default: grantable_roles).")
@click.option("--show-secret", is_flag=True, help="Print the issuer client's secret for the configuration.")
@pass_ctx
def keycloak_bootstrap(
    c: Context, admin_username: str, admin_password: str, admin_realm: str, roles: tuple[str, ...], show_secret: bool
) -> None:
    """Create or update, idempotently, what the issuer needs in keycloak_realm.

    It logs in as the Keycloak admin user given here, so the issuer's own client secret, which it
    creates, need not be configured yet.
    """
    from keycloak import KeycloakAdmin

    from .issuers.keycloak_bootstrap import admin_secret, bootstrap

    settings = c.settings_with(
        keycloak_admin_username=admin_username, keycloak_admin_password=admin_password, keycloak_admin_realm=admin_realm
    )
    if not settings.keycloak_server_url:
        raise click.ClickException("configuration error: keycloak_server_url is not set")
    admin = KeycloakAdmin(
        server_url=settings.keycloak_server_url,
        username=admin_username,
        password=admin_password,
        realm_name=admin_realm,
        user_realm_name=admin_realm,
        timeout=int(settings.keycloak_timeout.total_seconds()),
    )
    done = bootstrap(admin, settings, roles or settings.grantable_roles)
    for line in done or ["nothing to do: the realm is ready"]:
        click.echo(line)
    if show_secret:
        secret = admin_secret(admin, settings)
        name = "keycloak_admin_client_secret"
        click.echo("Put the issuer client's secret into the environment of mltokens (sync, CronJobs):")
        click.echo(f"{ENV_PREFIX}{name.upper()}={secret}")
        click.echo("and into CKAN's ini file:")
        click.echo(f"{CKAN_OPTION_PREFIX}{name} = {secret}")


@main.group(cls=Group)
def issuer() -> None:
    """The local issuer's public endpoints."""


@issuer.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8901, show_default=True, type=int)
@pass_ctx
def issuer_serve(c: Context, host: str, port: int) -> None:
    """Serve the OpenID discovery document and the JWKS of the local issuer."""
    from .issuers.local import LocalIssuer
    from .issuers.local_http import make_server

    if not isinstance(c.issuer, LocalIssuer):
        raise click.ClickException("only the local issuer is served by mltokens")
    logging.getLogger().setLevel(logging.INFO)
    try:
        server = make_server(c.issuer, host, port)
    except OSError as exc:  # port in use, address not on this host, unknown host name
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    click.echo(f"issuer {c.issuer.issuer_url} serving on http://{host}:{port}", err=True)
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


main.add_command(serve)
main.add_command(proxy)

if __name__ == "__main__":
    main()
