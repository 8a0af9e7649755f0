"""Typed errors a UI can show.

Every error carries a stable `code` for programs and a `message` that is safe to show
to the user who caused it. `field` names the input at fault, when there is one, so a
form or CKAN's ValidationError can put the message next to it. Scripts read the code
in `mltokens … --json`'s error output and as `__code` in the plugin's ValidationErrors.
"""

from __future__ import annotations


class TokenServiceError(Exception):
    code = "error"

    def __init__(self, message: str, field: str | None = None, also: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.also = also or {}  # further fields at fault, found by the same check: {field: message}


class ConfigError(TokenServiceError):
    code = "config"


class InvalidInput(TokenServiceError):
    """Bad input from the caller; nothing was changed."""

    code = "invalid"


class TTLTooLong(InvalidInput):
    code = "ttl_too_long"


class RolesNotAllowed(InvalidInput):
    code = "roles_not_allowed"


class TooManyTokens(InvalidInput):
    code = "too_many_tokens"


class RateLimited(InvalidInput):
    """Too many attempts in a short time; try again later."""

    code = "rate_limited"


class TokenNotFound(TokenServiceError):
    """Unknown token, or a token the actor may not see (deliberately the same)."""

    code = "not_found"

    def __init__(self, token_id: str = "") -> None:
        super().__init__("Token not found.", field="id")
        self.token_id = token_id


class NotAuthorized(TokenServiceError):
    """The actor may not do this (e.g. list another user's tokens without being an admin)."""

    code = "not_authorized"


class NoIssuerAccount(NotAuthorized):
    """The owner has no account at the issuer's identity provider, or it is disabled: nothing to grant."""

    code = "no_issuer_account"


class TokenNotActive(TokenServiceError):
    """The token is revoked (or otherwise final) and cannot be changed."""

    code = "not_active"


class AlreadyRevoked(TokenNotActive):
    code = "already_revoked"


class IssuerUnavailable(TokenServiceError):
    """The issuer (Keycloak, or the local key store) could not mint or change a token."""

    code = "issuer_unavailable"


class StoreUnavailable(TokenServiceError):
    """The token store could not commit; nothing was changed."""

    code = "store_unavailable"
