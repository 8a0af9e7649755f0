"""The baseline: the validator built the simple way (Flask under gunicorn sync workers).

Per request: PyJWT reads the header, picks the key by kid, decodes with claim checks,
then asks PostgreSQL whether the jti or token id is revoked (one pooled connection per
worker), then checks the route's role. Configured by BASELINE_DB, BASELINE_ISSUER and
BASELINE_JWKS (a file holding the issuer's JWKS).
"""

from __future__ import annotations

import json
import os
import re

import jwt
import psycopg2
from flask import Flask, Response, request

app = Flask(__name__)
ISSUER = os.environ["BASELINE_ISSUER"]
with open(os.environ["BASELINE_JWKS"]) as fh:
    KEYS = {k["kid"]: jwt.PyJWK(k) for k in json.load(fh)["keys"]}
ROUTE = re.compile(r"/v1/models/(?P<model>[A-Za-z0-9._-]+)/(?P<action>predict|train)")
_conn = None


def db() -> psycopg2.extensions.connection:
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(os.environ["BASELINE_DB"])
        _conn.autocommit = True
    return _conn


@app.route("/healthz")
def healthz() -> Response:
    return Response("ok\n", status=200)


@app.route("/auth/envoy/<path:path>", methods=["GET", "POST"])
def decide(path: str) -> Response:
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return Response(status=401)
    token = auth[7:]
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        claims = jwt.decode(
            token,
            KEYS[kid],
            algorithms=["RS256"],
            audience="model-api",
            issuer=ISSUER,
            leeway=30,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except (jwt.InvalidTokenError, KeyError):
        return Response(status=401)
    with db().cursor() as cur:
        cur.execute(
            "SELECT 1 FROM mltokens.revocation WHERE (jti = %s OR token_id = %s) AND effective_at <= now()",
            (claims["jti"], claims.get("token_id")),
        )
        if cur.fetchone():
            return Response(status=401)
    match = ROUTE.fullmatch("/" + path)
    if not match or f"model:{match['model']}:{match['action']}" not in claims.get("roles", []):
        return Response(status=403)
    return Response(status=200, headers={"X-Auth-Subject": claims["sub"]})
