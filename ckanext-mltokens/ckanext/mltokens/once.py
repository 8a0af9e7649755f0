"""Each create/renew form runs at most once, and its new token string is shown exactly once.

Every page with such a form carries a fresh random nonce (hidden field `mltoken_form`).
A POST first *claims* its nonce in Redis (`SET NX`); a second POST with the same nonce
(a double click, a reload of the POST, Back and submit again) does not act again: it
waits for the first to finish and then leads to the first one's result.

The result (with the token string) is shown after a redirect (Post/Redirect/Get), so a
reload of the page shown never renews or creates again. Between the POST and the GET
the result waits in Redis for at most `RESULT_TTL` seconds, **encrypted** (Fernet) with
a key derived from the nonce, under a name derived from the nonce, and is deleted when
read. Redis never holds the nonce or the key; the nonce travels in the form (a page
served `no-store`) and then in a short-lived cookie (`HttpOnly`, `SameSite=Strict`,
scoped to the token page, deleted when the result is shown), never in a URL. So the
token string is in clear only in the responses to the user's own browser; what sits in
Redis is useless without the user's cookie, and gone once shown or after two minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import ckan.plugins.toolkit as tk
from ckan.lib.redis import connect_to_redis
from cryptography.fernet import Fernet, InvalidToken

FIELD = "mltoken_form"
COOKIE = "mltokens_result"
RESULT_TTL = 120  # seconds a result waits for the page that shows it
CLAIM_TTL = 86400  # seconds a used nonce is remembered
PENDING = "pending"
WAIT = 15.0  # seconds a repeated submission waits for the first one to finish


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def _derive(nonce: str, purpose: bytes) -> bytes:
    return hmac.new(nonce.encode(), purpose, hashlib.sha256).digest()


def _key(user_id: str, nonce: str, kind: str) -> str:
    name = _derive(nonce, b"mltokens form id").hex()
    return f"{tk.config.get('ckan.site_id')}:mltokens:{kind}:{user_id}:{name}"


def _fernet(nonce: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(nonce, b"mltokens result key")))


def valid(nonce: str | None) -> bool:
    return bool(nonce) and 20 <= len(nonce) <= 100 and nonce.isascii()


def claim(user_id: str, nonce: str, scope: str) -> dict[str, Any] | None:
    """None if this is the first submission of the form for `scope` (go ahead), else the earlier outcome.

    The earlier outcome is `{"pending": True}` if the first submission is still running
    after `WAIT` seconds, or what `finish` recorded (the token's id and name).
    """
    redis = connect_to_redis()
    key = _key(user_id, nonce, "claim:" + scope)
    if redis.set(key, PENDING, nx=True, ex=CLAIM_TTL):
        return None
    deadline = time.monotonic() + WAIT
    while (value := redis.get(key)) in (PENDING, PENDING.encode()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if value is None:  # the first submission failed and let go: this one may try
        return claim(user_id, nonce, scope)
    return {"pending": True} if value in (PENDING, PENDING.encode()) else json.loads(value)


def release(user_id: str, nonce: str, scope: str) -> None:
    """The submission changed nothing (bad input, a failure): the form may be sent again."""
    connect_to_redis().delete(_key(user_id, nonce, "claim:" + scope))


def finish(user_id: str, nonce: str, scope: str, result: dict[str, Any]) -> None:
    """Keep `result` (encrypted) for the page that shows it; remember the token for repeated submissions."""
    redis = connect_to_redis()
    sealed = _fernet(nonce).encrypt(json.dumps(result).encode())
    with redis.pipeline() as pipe:
        pipe.set(_key(user_id, nonce, "result"), sealed, ex=RESULT_TTL)
        pipe.set(
            _key(user_id, nonce, "claim:" + scope),
            json.dumps({"id": result["id"], "name": result["name"]}),
            ex=CLAIM_TTL,
        )
        pipe.execute()


def waiting(user_id: str, nonce: str) -> bool:
    """Whether a result for this form still waits to be shown."""
    return bool(connect_to_redis().exists(_key(user_id, nonce, "result")))


def take(user_id: str, nonce: str) -> dict[str, Any] | None:
    """The result kept for this form, removed as it is read: it is shown once."""
    with connect_to_redis().pipeline() as pipe:  # MULTI: read and delete at once
        pipe.get(_key(user_id, nonce, "result"))
        pipe.delete(_key(user_id, nonce, "result"))
        sealed, _deleted = pipe.execute()
    if sealed is None:
        return None
    try:
        return json.loads(_fernet(nonce).decrypt(sealed))
    except InvalidToken:
        return None
