"""Input schemas of the mltoken_* actions.

They check shapes and types (text where text is expected, a duration, a date, a
boolean, a list of roles); the rules on values are token_service's (see validators.py).
`ignore_empty` is not used: CKAN's navl lets an empty list through it unvalidated.
"""

from __future__ import annotations

from ckan.logic.schema import validator_args
from ckan.types import Schema, Validator, ValidatorFactory


@validator_args
def mltoken_create(
    not_missing: Validator,
    unicode_only: Validator,
    ignore_missing: Validator,
    default: ValidatorFactory,
    mltokens_roles: Validator,
    mltokens_duration: Validator,
    mltokens_moment: Validator,
    mltokens_org: Validator,
) -> Schema:
    """Limits and kind are checked by token_service against the operator's bounds and the issuer."""
    return {
        "name": [not_missing, unicode_only],
        "roles": [not_missing, mltokens_roles],
        "ttl": [ignore_missing, mltokens_duration],
        "expires": [ignore_missing, mltokens_moment],
        "kind": [default("access_token"), unicode_only],
        "rate_limit": [ignore_missing],
        "daily_quota": [ignore_missing],
        "owner_org": [ignore_missing, mltokens_org],
    }


@validator_args
def mltoken_list(
    ignore_missing: Validator,
    default: ValidatorFactory,
    mltokens_user: Validator,
    mltokens_org: Validator,
    mltokens_boolean: Validator,
) -> Schema:
    return {
        "user": [ignore_missing, mltokens_user],
        "all_users": [default(False), mltokens_boolean],
        "include_inactive": [default(True), mltokens_boolean],
        "owner_org": [ignore_missing, mltokens_org],
        "unused": [default(False), mltokens_boolean],
    }


@validator_args
def mltoken_show(
    not_empty: Validator, unicode_only: Validator, ignore_missing: Validator, mltokens_org: Validator
) -> Schema:
    return {"id": [not_empty, unicode_only], "owner_org": [ignore_missing, mltokens_org]}


@validator_args
def mltoken_renew(
    not_empty: Validator,
    unicode_only: Validator,
    ignore_missing: Validator,
    mltokens_duration: Validator,
    mltokens_moment: Validator,
    mltokens_org: Validator,
) -> Schema:
    return {
        "id": [not_empty, unicode_only],
        "ttl": [ignore_missing, mltokens_duration],
        "expires": [ignore_missing, mltokens_moment],
        "owner_org": [ignore_missing, mltokens_org],
    }


def mltoken_rotate() -> Schema:
    """Rotate takes what renew takes."""
    return mltoken_renew()


@validator_args
def mltoken_revoke(
    not_empty: Validator, unicode_only: Validator, ignore_missing: Validator, mltokens_org: Validator
) -> Schema:
    return {
        "id": [not_empty, unicode_only],
        "reason": [ignore_missing, unicode_only],
        "owner_org": [ignore_missing, mltokens_org],
    }


@validator_args
def mltoken_revoke_all(
    ignore_missing: Validator,
    default: ValidatorFactory,
    unicode_only: Validator,
    mltokens_user: Validator,
    mltokens_org: Validator,
    mltokens_ids: Validator,
    mltokens_boolean: Validator,
) -> Schema:
    return {
        "user": [ignore_missing, mltokens_user],
        "all_users": [default(False), mltokens_boolean],
        "ids": [ignore_missing, mltokens_ids],
        "reason": [ignore_missing, unicode_only],
        "owner_org": [ignore_missing, mltokens_org],
    }


@validator_args
def mltoken_roles_list(ignore_missing: Validator, mltokens_org: Validator) -> Schema:
    return {"owner_org": [ignore_missing, mltokens_org]}


@validator_args
def user_delete(not_empty: Validator, mltokens_user: Validator) -> Schema:
    """Only what the chained `user_delete` reads before CKAN's own action runs."""
    return {"id": [not_empty, mltokens_user]}


@validator_args
def organization_delete(not_empty: Validator, mltokens_org: Validator) -> Schema:
    """Only what the chained `organization_delete` / `organization_purge` read before CKAN's own action runs."""
    return {"id": [not_empty, mltokens_org]}


@validator_args
def mltoken_patch(
    not_empty: Validator,
    unicode_only: Validator,
    not_missing: Validator,
    ignore_missing: Validator,
    mltokens_boolean: Validator,
    mltokens_org: Validator,
) -> Schema:
    return {
        "id": [not_empty, unicode_only],
        "expiry_notices": [not_missing, mltokens_boolean],
        "owner_org": [ignore_missing, mltokens_org],
    }


@validator_args
def mltoken_usage(
    ignore_missing: Validator,
    unicode_only: Validator,
    default: ValidatorFactory,
    mltokens_user: Validator,
    mltokens_boolean: Validator,
    mltokens_days: Validator,
    mltokens_org: Validator,
) -> Schema:
    return {
        "id": [ignore_missing, unicode_only],
        "user": [ignore_missing, mltokens_user],
        "all_users": [default(False), mltokens_boolean],
        "days": [default(30), mltokens_days],
        "owner_org": [ignore_missing, mltokens_org],
    }
