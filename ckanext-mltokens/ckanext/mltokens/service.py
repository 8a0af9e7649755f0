"""The bridge to token_service: settings from CKAN's config, the lifecycle, actors, errors."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.types import Context

from token_service import errors
from token_service.config import CKAN_OPTION_PREFIX, Settings, parse_duration
from token_service.issuers import Owner, make_issuer
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

PREFIX = CKAN_OPTION_PREFIX


def settings() -> Settings:
    """token_service settings from the `ckanext.mltokens.*` options (declared defaults apply)."""
    raw = {}
    for field in dataclasses.fields(Settings):
        value = tk.config.get(PREFIX + field.name)
        if value is not None:
            raw[field.name] = value
    if not raw.get("database_url"):
        raw["database_url"] = tk.config.get("sqlalchemy.url")
    return Settings.from_mapping(raw)


@functools.lru_cache(maxsize=4)
def _lifecycle(current: Settings) -> Lifecycle:
    store = Store(current.database_url)
    return Lifecycle(current, store, make_issuer(current, store, utcnow))


def lifecycle() -> Lifecycle:
    """The process-wide lifecycle for the current configuration."""
    return _lifecycle(settings())


def token_endpoint() -> str:
    """Keycloak's token endpoint as users reach it: `public_token_endpoint`, else the one CKAN uses."""
    public = (tk.config.get(PREFIX + "public_token_endpoint") or "").strip()
    if public:
        if not public.startswith(("http://", "https://")):
            raise errors.ConfigError(f"{PREFIX}public_token_endpoint: must be an http(s) URL")
        return public
    s = settings()
    return f"{s.keycloak_server_url.rstrip('/')}/realms/{s.keycloak_realm}/protocol/openid-connect/token"


def expiry_warning() -> timedelta:
    return parse_duration(tk.config.get(PREFIX + "expiry_warning"), PREFIX + "expiry_warning")


def unused_after() -> timedelta:
    """`ckanext.mltokens.unused_after`: the sysadmin page lists active tokens idle this long."""
    key = PREFIX + "unused_after"
    idle = parse_duration(tk.config.get(key), key)
    if idle < timedelta(days=1):
        raise errors.ConfigError(f"{key}: must be at least 1d")
    return idle


def role_prefixes() -> tuple[str, ...]:
    return tuple(tk.config.get(PREFIX + "role_prefixes") or ())


def user_of(context: Context) -> model.User:
    """The CKAN user making the call; auth functions have already turned away anonymous callers."""
    user = model.User.get(context.get("user") or "")
    if user is None:
        raise tk.NotAuthorized(tk._("You must be logged in."))
    return user


def actor_of(user: model.User, acting_for: Owner | None = None) -> Actor:
    """The user as token_service's actor; `acting_for` the organization whose tokens CKAN lets them manage."""
    return Actor(id=user.id, name=user.name, is_admin=bool(user.sysadmin), source="ckan", acting_for=acting_for)


def deleting_actor(caller: model.User | None, source: str) -> Actor:
    """Who revokes an owner's tokens as CKAN deletes the owner: CKAN has authorised the deletion, so
    the caller with an operator's rights (or the operator, for a call without a user)."""
    return Actor(caller.id, caller.name, is_admin=True, source=source) if caller else Actor.operator(source)


def owner_of(user: model.User) -> Owner:
    return Owner(id=user.id, name=user.name)


CODE = "__code"  # the error dict's key for the error's code, beside the `__type` CKAN's API adds


def validation_error(errors: dict[str, list[str]], code: str) -> tk.ValidationError:
    """A ValidationError of field messages that also names its stable `code` (token_service's
    error codes, docs/ckan-plugin.md) under `__code`, for scripts using the action API."""
    return tk.ValidationError({**errors, CODE: code}, error_summary=tk.ValidationError(errors).error_summary)


@contextmanager
def ckan_errors(fields: dict[str, str] | None = None) -> Iterator[None]:
    """Turn token_service errors into CKAN's: field errors, not found, not authorized.

    `fields` renames the service's field names to the action's parameter names.
    Service failures (store, issuer, configuration) propagate unchanged: they are
    server errors, logged by CKAN, and the views show a generic message for them.
    """
    fields = fields or {}
    try:
        yield
    except errors.TokenNotFound:
        raise tk.ObjectNotFound(tk._("Token not found.")) from None
    except errors.NotAuthorized as exc:
        raise tk.NotAuthorized(exc.message) from None
    except (errors.InvalidInput, errors.TokenNotActive) as exc:
        found = {exc.field or "id": exc.message, **exc.also}
        messages = {fields.get(field, field): [message] for field, message in found.items()}
        raise validation_error(messages, exc.code) from None
