"""Where each gateway puts the original request in its authorization sub-request.

| endpoint            | gateway                                         | original method / path          |
|---------------------|-------------------------------------------------|---------------------------------|
| `/auth/envoy/<path>`| Envoy ext_authz HTTP (`path_prefix`), Istio     | the sub-request's own method,   |
|                     | CUSTOM provider, Ambassador/Emissary AuthService| its path after the prefix       |
| `/auth/nginx`       | nginx `auth_request`                            | `X-Original-Method`, `X-Original-URI` |
| `/auth/forward`     | Traefik ForwardAuth, Caddy `forward_auth`       | `X-Forwarded-Method`, `X-Forwarded-Uri` |

The original path is percent-decoded once and must then be canonical (no `.` or `..`
segments, no empty segment, no slash or backslash encoded, no backslash, no `%` left, no
control character), so the policy
sees the path the model API will route on; anything else is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import unquote

from .memo import remember
from .reasons import Reason, Refused

ENVOY_PREFIX = "/auth/envoy"
HEADER_CONTRACTS: dict[str, tuple[str, str]] = {
    "/auth/nginx": ("x-original-method", "x-original-uri"),
    "/auth/forward": ("x-forwarded-method", "x-forwarded-uri"),
}
_FORBIDDEN = frozenset("\\%") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
# Already canonical, nothing to decode: non-empty segments of unreserved and sub-delim
# characters, none of them `.` or `..`, and at most a trailing slash (the common case).
_PLAIN = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+/?|/")


# Recent (method, URI) → Original: a gateway asks about the same few routes again and again.
_MEMO: dict[tuple[str, str], Original] = {}
MEMO_ENTRIES = 1024
MEMO_URI_CHARS = 256


class ContractError(Refused):
    """The gateway's sub-request does not carry a usable original request."""


class Original(NamedTuple):
    method: str
    path: str


def canonical_path(raw: str) -> str:
    """The decoded path of an original URI, or ContractError if it is not canonical.

    A `#` anywhere is refused: a request target never carries a fragment (RFC 9112 3.2.1), and
    cutting one off would decide on a path the upstream is sent with the rest still on it."""
    if "#" in raw:
        raise ContractError(Reason.BAD_PATH)
    path = raw.split("?", 1)[0]
    return path if _PLAIN.fullmatch(path) else decode_path(path)


def decode_path(path: str) -> str:
    """Percent-decode a path once and check that the result is canonical."""
    if not path.startswith("/") or "%2f" in path.lower() or "%5c" in path.lower():
        raise ContractError(Reason.BAD_PATH)  # an encoded / or \ splits segments differently upstream
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise ContractError(Reason.BAD_PATH) from None
    if any(c in _FORBIDDEN for c in decoded):
        raise ContractError(Reason.BAD_PATH)
    segments = decoded.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        raise ContractError(Reason.BAD_PATH)
    return decoded


def original_request(path: str, method: str, header: Callable[[str], str | None]) -> Original | None:
    """The request the gateway asks about; None when `path` is no decision endpoint.

    `path` is the sub-request's raw (not yet percent-decoded) path; `header` looks up a
    lower-case header name.
    """
    names = HEADER_CONTRACTS.get(path)
    if names is not None:
        original_method, original_uri = header(names[0]), header(names[1])
        if not original_method or not original_uri:
            raise ContractError(Reason.MISSING_ORIGINAL_REQUEST)
        return _original(original_method, original_uri)
    if path.startswith(ENVOY_PREFIX) and (len(path) == len(ENVOY_PREFIX) or path[len(ENVOY_PREFIX)] == "/"):
        return _original(method, path[len(ENVOY_PREFIX) :] or "/")
    return None


def _original(method: str, uri: str) -> Original:
    key = (method, uri)
    found = _MEMO.get(key)
    if found is None:
        found = Original(method.upper(), canonical_path(uri))
        if len(uri) <= MEMO_URI_CHARS:
            remember(_MEMO, key, found, MEMO_ENTRIES)
    return found
