"""Why a request was answered as it was: the catalogue of reasons, and the refusal that carries one.

A `Reason`'s value is its stable id: the `reason` label of
`mltokens_validator_decisions_total`, the word in the `deny <status> <reason>` log line,
and a row of the alerting table in docs/security.md (a test keeps the table and this
enum identical). Its `status` is the HTTP status it is answered with. Reasons are for
operators only: clients see the status and a constant body.

Each stage of the pipeline refuses by raising a `Refused` subclass (`BearerError`,
`ContractError`, `TokenError`, the lean server's `RequestRefused`) or by returning
`decision.deny(reason)`.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every reason a decision (or the lean server, before one) gives, with its HTTP status."""

    status: int

    def __new__(cls, value: str, status: int) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    ALLOWED = "allowed", 200
    ANONYMOUS = "anonymous", 200
    MISSING_TOKEN = "missing_token", 401
    NOT_BEARER = "not_bearer", 401
    EMPTY_TOKEN = "empty_token", 401
    MALFORMED_HEADER = "malformed_header", 401
    HEADER_TOO_LARGE = "header_too_large", 401
    TOKEN_TOO_LARGE = "token_too_large", 401
    MALFORMED = "malformed", 401
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed", 401
    MISSING_KID = "missing_kid", 401
    UNSUPPORTED_HEADER = "unsupported_header", 401
    UNKNOWN_ISSUER = "unknown_issuer", 401
    UNKNOWN_KID = "unknown_kid", 401
    KEY_ALGORITHM_MISMATCH = "key_algorithm_mismatch", 401
    BAD_SIGNATURE = "bad_signature", 401
    WRONG_ISSUER = "wrong_issuer", 401
    WRONG_AUDIENCE = "wrong_audience", 401
    EXPIRED = "expired", 401
    NOT_YET_VALID = "not_yet_valid", 401
    MISSING_CLAIM = "missing_claim", 401
    MALFORMED_CLAIM = "malformed_claim", 401
    REVOKED = "revoked", 401
    UNPREFIXED = "unprefixed", 401
    BAD_PATH = "bad_path", 403
    NO_ROUTE = "no_route", 403
    INSUFFICIENT_ROLE = "insufficient_role", 403
    UPGRADE_NOT_ALLOWED = "upgrade_not_allowed", 403
    RATE_LIMITED = "rate_limited", 429
    QUOTA_EXCEEDED = "quota_exceeded", 429
    REVOCATIONS_STALE = "revocations_stale", 503
    KEYS_UNAVAILABLE = "keys_unavailable", 503
    MISSING_ORIGINAL_REQUEST = "missing_original_request", 503
    UNSUPPORTED_CONTRACT = "unsupported_contract", 503
    INTERNAL_ERROR = "internal_error", 503
    # The lean server's own refusals, before any decision: logged, not counted as decisions.
    MALFORMED_REQUEST = "malformed_request", 400
    REQUEST_HEAD_TOO_LARGE = "request_head_too_large", 431

    @property
    def decided(self) -> bool:
        """Whether a decision gives this reason (counted in the decisions metric)."""
        return self not in _BEFORE_DECISION


_BEFORE_DECISION = frozenset({Reason.MALFORMED_REQUEST, Reason.REQUEST_HEAD_TOO_LARGE})


class Refused(Exception):
    """A request refused for `reason`; the message is the reason's id, never shown to the client."""

    def __init__(self, reason: Reason) -> None:
        if not isinstance(reason, Reason):
            raise TypeError(f"a refusal needs a Reason, not {reason!r}")
        super().__init__(reason.value)
        self.reason = reason
