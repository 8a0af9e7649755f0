"""RFC 7662 token introspection: `POST /introspect` for gateways that speak it (Kong, APISIX, Oathkeeper).

The caller (a gateway) authenticates with the configured secret: HTTP Basic
`introspection_client_id:introspection_secret` (RFC 6749 2.3.1, `client_secret_basic`), the
same pair as form parameters `client_id`/`client_secret` (`client_secret_post`), or
`Authorization: Bearer <secret>`. The body is `application/x-www-form-urlencoded` with one
`token` (a `token_type_hint` is accepted and ignored: there is one kind of token).

The token goes through the decision's stages that need no route (`Decider.introspect`):
freshness, cache, signature and claims, revocation. A token that fails any of them is
`{"active": false}`, whatever the reason (logged, never told); revocation data too old to
decide on, or an issuer's keys not loaded, is 503 as for a decision, since the token is
not known to be inactive. Rate limits and the route policy do not apply: no request is
being made, and the gateway that asks applies its own.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from .decision import Headers, Identity

FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 8
_NO_STORE = ("cache-control", "no-store")
_JSON = ("content-type", "application/json")
_HEADERS: Headers = (_JSON, _NO_STORE)
INACTIVE = (200, _HEADERS, b'{"active":false}\n')
INVALID_REQUEST = (400, _HEADERS, b'{"error":"invalid_request"}\n')
INVALID_CLIENT = (
    401,
    (_JSON, _NO_STORE, ("www-authenticate", 'Basic realm="mltokens-introspection"')),
    b'{"error":"invalid_client"}\n',
)
NOT_ALLOWED = (405, (_JSON, _NO_STORE, ("allow", "POST")), b'{"error":"invalid_request"}\n')


def max_body(max_token_bytes: int) -> int:
    """The largest body read: a percent-encoded token (3 bytes a character at worst) and a few parameters."""
    return 3 * max_token_bytes + 4096


class BadRequest(ValueError):
    """Not an RFC 7662 request: wrong content type, a body that is no form, a parameter given twice."""


def form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The form parameters of an introspection request, each given at most once."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM:
        raise BadRequest("content type")
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("form") from None
    if any(len(values) != 1 for values in fields.values()):  # blank copies count (`token=&token=…`)
        raise BadRequest("repeated parameter")
    # RFC 6749 3.1: a parameter without a value is treated as omitted
    return {name: values[0] for name, values in fields.items() if values[0]}


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def authenticated(authorization: str | None, params: dict[str, str], client_id: str, secret: str) -> bool:
    """Whether the caller presented the configured client secret (Basic, Bearer or form parameters)."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        value = value.strip(" ")
        if scheme.lower() == "bearer":
            return _equal(value, secret)
        if scheme.lower() != "basic":
            return False
        try:
            pair = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given_id, colon, given_secret = pair.partition(":")
        # RFC 6749 2.3.1: both are form-urlencoded before they are joined
        return bool(colon) & _equal(unquote_plus(given_id), client_id) & _equal(unquote_plus(given_secret), secret)
    given_id, given_secret = params.get("client_id"), params.get("client_secret")
    if given_id is None or given_secret is None:
        return False
    return _equal(given_id, client_id) & _equal(given_secret, secret)


def active(identity: Identity) -> bytes:
    """The RFC 7662 answer for a valid token, with mltokens' roles, owner and token id."""
    answer: dict[str, Any] = {
        "active": True,
        "scope": " ".join(sorted(identity.scopes)),
        "client_id": identity.client_id,
        "username": identity.owner_name,
        "token_type": "Bearer",
        "sub": identity.subject,
        "aud": identity.audience if isinstance(identity.audience, str) else list(identity.audience),
        "iss": identity.issuer,
        "exp": identity.expires_at,
        "iat": identity.issued_at,
        "jti": identity.jti,
        "roles": sorted(identity.roles),
        "owner": identity.owner,
        "token_id": identity.token_id,
    }
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


ACTIVE_HEADERS = _HEADERS
