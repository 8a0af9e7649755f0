"""Instructions per cached decision, counted by callgrind: `python -m bench.decide_instructions`.

Seconds are not repeatable on a shared host; instruction counts are. This runs the same
setup twice under `valgrind --tool=callgrind` (a deterministic EC key, 200 tokens each
decided once), the second time followed by `--requests` cached decisions through
`Decider.decide`, and prints the difference divided by the number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ISSUER = "http://issuer.bench"
PATH = "/v1/models/sentiment/predict"
TOKENS = 200


def decide(requests: int) -> None:
    """The measured program: setup, one (cold) decision per token, then `requests` cached ones."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from token_service.config import Settings
    from token_service.validator.decision import Decider
    from token_service.validator.jwks import KeyCache
    from token_service.validator.policy import Policy
    from token_service.validator.revocations import RevocationSet
    from token_service.validator.settings import ValidatorSettings

    key = ec.derive_private_key(0x6D6C746F6B656E73, ec.SECP256R1())  # fixed: setup costs the same each run
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
    documents = {
        ISSUER + "/.well-known/openid-configuration": {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"},
        ISSUER + "/jwks": {"keys": [jwk]},
    }
    core = Settings.from_mapping({"database_url": "postgresql://unused/x", "issuer_url": ISSUER})
    now = int(time.time())
    tokens = [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": core.audience,
                "sub": "u",
                "jti": str(uuid.UUID(int=i)),
                core.token_id_claim: str(uuid.UUID(int=i + 1)),
                "iat": now,
                "exp": now + 3600,
                core.roles_claim: ["model:sentiment:predict"],
            },
            key,
            algorithm="ES256",
            headers={"kid": "k1"},
        )
        for i in range(TOKENS)
    ]
    keys = KeyCache((ISSUER,), 300, 30, 5, fetch=lambda url, timeout: documents[url])
    asyncio.run(keys.refresh(ISSUER))
    revocations = RevocationSet()
    revocations.replace(((str(uuid.UUID(int=i)), None, 0.0) for i in range(TOKENS, TOKENS + 1000)), time.time())
    revocations.confirmed_at = float("inf")
    policy = Policy.from_mapping(
        {"routes": [{"path": "/v1/models/{model}/predict", "methods": ["POST"], "roles": ["model:{model}:predict"]}]}
    )
    decider = Decider(ValidatorSettings.from_mapping({"policy_file": "unused"}, core), keys, revocations, policy)
    for token in tokens:
        assert decider.decide("POST", PATH, token).status == 200  # type: ignore[union-attr]
    for i in range(requests):
        decider.decide("POST", PATH, tokens[i % TOKENS])


def instructions(requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.decide_instructions",
                "--run",
                str(requests),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        return int(re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the measured program itself
    args = parser.parse_args()
    if args.run is not None:
        decide(args.run)
        return
    base, loaded = instructions(0), instructions(args.requests)
    print(
        f"{(loaded - base) / args.requests:,.0f} instructions per cached decision "
        f"({args.requests:,} requests; setup {base:,})"
    )


if __name__ == "__main__":
    main()
