"""Input schemas of the mltoken_* actions."""
from __future__ import annotations

from ckan.logic.schema import validator_args
from ckan.types import Schema, Validator, ValidatorFactory


@validator_args
def mltoken_create(
    not_missing: Validator, unicode_safe: Validator, ignore_missing: Validator, ignore_empty: Validator,
    mltokens_roles: Validator, mltokens_duration: Validator, mltokens_moment: Validator,
) -> Schema:
    """Limits and kind are checked by token_service against the operator's bounds and the issuer."""
    return {
        "name": [not_missing, unicode_safe],
        "roles": [not_missing, mltokens_roles],
        "ttl": [ignore_missing, mltokens_duration],
        "expires": [ignore_missing, mltokens_moment],
        "kind": [ignore_empty, unicode_safe],
        "rate_limit": [ignore_missing],
        "daily_quota": [ignore_missing],
    }


@validator_args
def mltoken_list(
    ignore_missing: Validator, unicode_safe: Validator, default: ValidatorFactory, boolean_validator: Validator,
) -> Schema:
    return {
        "user": [ignore_missing, unicode_safe],
        "all_users": [default(False), boolean_validator],
        "include_inactive": [default(True), boolean_validator],
    }


@validator_args
def mltoken_show(not_empty: Validator, unicode_safe: Validator) -> Schema:
    return {"id": [not_empty, unicode_safe]}


@validator_args
def mltoken_renew(
    not_empty: Validator, unicode_safe: Validator, ignore_missing: Validator,
    mltokens_duration: Validator, mltokens_moment: Validator,
) -> Schema:
    return {
        "id": [not_empty, unicode_safe],
        "ttl": [ignore_missing, mltokens_duration],
        "expires": [ignore_missing, mltokens_moment],
    }


@validator_args
def mltoken_revoke(not_empty: Validator, unicode_safe: Validator, ignore_missing: Validator) -> Schema:
    return {"id": [not_empty, unicode_safe], "reason": [ignore_missing, unicode_safe]}


@validator_args
def mltoken_revoke_all(ignore_missing: Validator, unicode_safe: Validator) -> Schema:
    return {"user": [ignore_missing, unicode_safe], "reason": [ignore_missing, unicode_safe]}
