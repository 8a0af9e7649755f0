"""Every class of denied decision is visible to an operator: counted in
`mltokens_validator_decisions_total{status, reason}`, logged with its reason, and listed in
the alerting table of docs/security.md, which is the `Reason` enum every refusal carries."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from sqlalchemy import text

from tests.support.clock import Clock
from tests.validator import tokens
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle
from token_service.validator.app import Validator
from token_service.validator.bearer import BearerError
from token_service.validator.contracts import ContractError
from token_service.validator.decision import deny
from token_service.validator.jwt_fast import TokenError
from token_service.validator.policy import Policy
from token_service.validator.protocol import RequestRefused
from token_service.validator.reasons import Reason, Refused
from token_service.validator.revocations import LOAD_SQL
from token_service.validator.settings import ValidatorSettings

ROOT = Path(__file__).resolve().parents[2]


def alerting_table() -> list[tuple[str, int]]:
    """(reason, status) of each row of docs/security.md's alerting table, in order."""
    section = (ROOT / "docs" / "security.md").read_text().split("### Alerting on denied decisions", 1)[1]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section.split("\n## ", 1)[0], re.MULTILINE)
    return [(reason, int(status)) for reason, status in rows]


def test_the_operators_alerting_table_is_the_reason_enum() -> None:
    assert alerting_table() == [(reason.value, reason.status) for reason in Reason]


def test_every_refusal_carries_a_reason_of_the_catalogue() -> None:
    for error in (TokenError, BearerError, ContractError, RequestRefused):
        refused = error(Reason.MALFORMED)
        assert isinstance(refused, Refused) and refused.reason is Reason.MALFORMED and str(refused) == "malformed"
    with pytest.raises(TypeError):
        TokenError("malformed")  # type: ignore[arg-type]  # a bare string is no reason
    assert deny(Reason.BAD_PATH)[:2] == (403, Reason.BAD_PATH)
    assert deny(Reason.MISSING_ORIGINAL_REQUEST).status == 503


def test_denied_decisions_are_counted_and_logged_by_reason(
    vsettings: ValidatorSettings,
    served_lifecycle: Lifecycle,
    served_issuer: LocalIssuer,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy.from_mapping(
        {
            "routes": [
                {
                    "path": "/v1/models/{model}/predict",
                    "methods": ["POST"],
                    "roles": ["model:{model}:predict"],
                    "daily_quota": 2,
                },
                {"path": "/v1/models/{model}/train", "methods": ["POST"], "roles": ["model:{model}:train"]},
            ]
        }
    )
    owner = Owner("u-alice", "alice")
    slow = served_lifecycle.create(owner, "slow", ["model:sentiment:predict"], rate_limit=0.01).secret
    plain = served_lifecycle.create(owner, "plain", ["model:sentiment:predict"]).secret
    revoked = served_lifecycle.create(owner, "revoked", ["model:sentiment:predict"])
    served_lifecycle.revoke(revoked.info.id, Actor.operator())
    header, claims, _ = tokens.segments(plain)
    kid, key = served_issuer.keys.signing_key()
    past = int((clock() - timedelta(hours=2)).timestamp())
    expired = jwt.encode({**claims, "iat": past - 60, "exp": past}, key, algorithm=header["alg"], headers={"kid": kid})
    predict, train = "/auth/envoy/v1/models/sentiment/predict", "/auth/envoy/v1/models/sentiment/train"
    requests: list[tuple[str, str, dict[str, str], str]] = [
        ("POST", predict, {}, "missing_token"),
        ("POST", predict, {"authorization": "Basic eDp5"}, "not_bearer"),
        ("POST", predict, {"authorization": "Bearer a b"}, "malformed_header"),
        ("POST", "/auth/envoy/v1/../admin", {}, "bad_path"),
        ("POST", "/auth/nginx", {}, "missing_original_request"),
        ("POST", predict, {"authorization": "Bearer " + tokens.resign(plain, tokens.attacker_key())}, "bad_signature"),
        ("POST", predict, {"authorization": "Bearer " + tokens.alg_none(plain)}, "algorithm_not_allowed"),
        ("POST", predict, {"authorization": "Bearer " + expired}, "expired"),
        ("POST", predict, {"authorization": "Bearer " + revoked.secret}, "revoked"),
        ("POST", train, {"authorization": "Bearer " + plain}, "insufficient_role"),
        ("GET", "/auth/envoy/nowhere", {"authorization": "Bearer " + plain}, "no_route"),
        ("POST", predict, {"authorization": "Bearer " + slow}, "allowed"),
        ("POST", predict, {"authorization": "Bearer " + slow}, "rate_limited"),
        ("POST", predict, {"authorization": "Bearer " + plain}, "allowed"),
        ("POST", predict, {"authorization": "Bearer " + plain}, "allowed"),
        ("POST", predict, {"authorization": "Bearer " + plain}, "quota_exceeded"),
    ]

    async def scenario() -> bytes:
        validator = Validator(vsettings, policy)
        validator.decider.wall = lambda: clock().timestamp()
        assert await validator.keys.refresh(vsettings.issuers[0])
        with served_lifecycle.store.engine.connect() as conn:
            validator.revocations.replace(conn.execute(text(LOAD_SQL)).all(), clock().timestamp())
        validator.revocations.confirmed_at = time.monotonic()
        for method, path, headers, reason in requests:
            status, _, _ = await validator.handle(method, path, headers.get)
            assert (status == 200) == (reason == "allowed"), (reason, status)
        exposition = (await validator.handle("GET", "/metrics", {}.get))[2]
        await validator.limiter.close()
        return exposition

    with caplog.at_level(logging.INFO, logger="token_service.validator"):
        exposition = asyncio.run(asyncio.wait_for(scenario(), 30)).decode()
    logged = caplog.text
    for _, _, _, reason in requests:
        if reason != "allowed":
            status = Reason(reason).status
            assert re.search(
                rf'mltokens_validator_decisions_total{{reason="{reason}",status="{status}"}} [1-9]', exposition
            ), reason
            assert re.search(rf"deny \d+ {reason} ", logged), reason
    assert 'reason="quota_exceeded",status="429"' in exposition
