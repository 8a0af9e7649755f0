"""The gateway-facing validator: `mltokens serve` and `mltokens proxy`. Nothing here imports CKAN.

One request runs through these stages in this order; each is named after its module, and
the first that refuses answers, for a `reasons.Reason` (the catalogue of refusals):

 1. contract       `contracts.py`  the original method and canonical path from the gateway's
                                   sub-request (`bad_path`, `missing_original_request`)
 2. bearer syntax  `bearer.py`     the Authorization header, if any, is `Bearer <token>`
                                   (`not_bearer`, `empty_token`, ...: also on anonymous routes)
 3. anonymous      `policy.py`     an anonymous route of the policy: allowed, no token read
 4. freshness      `revocations.py` revocation data confirmed within `max_staleness` (else 503)
 5. bearer         `bearer.py`     no token: `missing_token`
 6. cache          `decision.py`   a token verified before, inside its validity window, skips 7
 7. signature and  `jwt_fast.py`,  the RFC 6750 characters, the JWS header, the issuer's key
    claims         `jwks.py`       (refetched once for an unknown `kid`), the signature, the
                                   registered claims, the identity; then cached
 8. revocation     `revocations.py` jti, token id or credential revoked: `revoked`
 9. policy         `policy.py`     the route's roles and scopes (`no_route`, `insufficient_role`)
10. limits         `ratelimit.py`  the route's and the token's rate limits and daily quota (429)
11. answer         `app.py`        200 with identity headers, or the refusal's status and a
                                   constant body (`protocol.py`, `grpc_authz.py` carry it)
12. usage and      `usage.py`,     the token's last use and count; the decision counted by
    metrics        `metrics.py`    status and reason, a refusal logged as `deny <status> <reason>`

`app.Validator.respond` runs 1 and hands the original request to `Validator.decide`, which
runs 2 and 10-12 around `decision.Decider.decide` (3-9). `mltokens proxy` (`proxy.py`) reads
the original request from the request itself (1, the same canonical-path check) and calls
`Validator.decide` too. RFC 7662 introspection (`introspection.py`, `Validator.introspection`)
runs 4 and 6-8 (`Decider.introspect`): no route, so no policy or limits.
"""
