"""Instructions per decision, counted by callgrind: `python -m bench.decide_instructions [--cold] [--http]`.

Seconds are not repeatable on a shared host; instruction counts are. This runs the same
setup twice under `valgrind --tool=callgrind`, the second time followed by `--requests`
decisions, and prints the difference divided by the number of requests.

- Default (cached): a deterministic EC key, 200 tokens each decided once, then cached
  decisions through `Decider.decide`.
- `--cold`: never-seen tokens, as bench.run's cold scenario: RS256 with a 2048-bit key,
  claims shaped as the local issuer's, the cache off, 10,000 revocations (jti and token
  id) loaded. The key and the tokens are made once by this process and read by both runs.
- `--http`: through the lean server's `DecisionProtocol.data_received` (the Envoy contract,
  a stand-in transport) instead of `Decider.decide`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ISSUER = "http://issuer.bench"
PATH = "/v1/models/sentiment/predict"
TOKENS = 200
COLD_TOKENS = 2000
ROLE = "model:sentiment:predict"


def cold_tokens(path: Path) -> None:
    """A 2048-bit RSA key's public JWK (first line) and COLD_TOKENS + 1 tokens it signed, as the local issuer's."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from token_service.config import Settings

    key = rsa.generate_private_key(65537, 2048)
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
    core = Settings.from_mapping({"database_url": "postgresql://unused/x", "issuer_url": ISSUER})
    now = int(time.time())
    lines = [json.dumps(jwk)]
    for _ in range(COLD_TOKENS + 1):
        claims = {
            "iss": ISSUER,
            "aud": core.audience,
            "sub": "bench",
            core.owner_claim: "bench",
            core.owner_name_claim: "bench",
            core.token_id_claim: str(uuid.uuid4()),
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 7200,
            "typ": "Bearer",
            core.roles_claim: [ROLE],
            "scope": ROLE,
        }
        lines.append(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1", "typ": "JWT"}))
    path.write_text("\n".join(lines) + "\n")


def setup(cold: Path | None) -> tuple[Any, Any, list[str]]:
    """(settings, key cache, tokens): the EC key and cached tokens, or those of `cold_tokens`."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from token_service.config import Settings
    from token_service.validator.jwks import KeyCache
    from token_service.validator.settings import ValidatorSettings

    core = Settings.from_mapping({"database_url": "postgresql://unused/x", "issuer_url": ISSUER})
    if cold is None:
        key = ec.derive_private_key(0x6D6C746F6B656E73, ec.SECP256R1())  # fixed: setup costs the same each run
        jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
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
                    core.roles_claim: [ROLE],
                },
                key,
                algorithm="ES256",
                headers={"kid": "k1"},
            )
            for i in range(TOKENS)
        ]
    else:
        first, *tokens = cold.read_text().splitlines()
        jwk = json.loads(first)
    documents = {
        ISSUER + "/.well-known/openid-configuration": {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"},
        ISSUER + "/jwks": {"keys": [jwk]},
    }
    settings = ValidatorSettings.from_mapping({"policy_file": "unused", "cache_size": 0 if cold else 10_000}, core)
    keys = KeyCache((ISSUER,), 300, 30, 5, fetch=lambda url, timeout: documents[url])
    asyncio.run(keys.refresh(ISSUER))
    return settings, keys, tokens


def decide(requests: int, cold: Path | None, http: bool) -> None:
    """The measured program: setup, a first decision per token (cached) or one token (cold), then `requests`."""
    from token_service.validator.decision import Decider
    from token_service.validator.policy import Policy
    from token_service.validator.revocations import RevocationSet

    settings, keys, tokens = setup(cold)
    revocations = RevocationSet()
    if cold is None:
        revocations.replace(((str(uuid.UUID(int=i)), None, 0.0) for i in range(TOKENS, TOKENS + 1000)), time.time())
    else:
        rows = ((str(uuid.UUID(int=i)), str(uuid.UUID(int=i + 1 << 64)), 0.0) for i in range(10_000))
        revocations.replace(rows, time.time())
    revocations.confirmed_at = float("inf")
    policy = Policy.from_mapping(
        {"routes": [{"path": "/v1/models/{model}/predict", "methods": ["POST"], "roles": ["model:{model}:predict"]}]}
    )
    ask = protocol(settings, keys, revocations, policy) if http else Decider(settings, keys, revocations, policy).decide
    first, rest = (tokens, tokens) if cold is None else (tokens[:1], tokens[1:])
    for token in first:
        assert ask("POST", PATH, token).status == 200  # type: ignore[attr-defined]
    for i in range(requests):
        ask("POST", PATH, rest[i % len(rest)])


class _Answer:
    """What `protocol`'s stand-in asks return: the status of the response written."""

    def __init__(self, written: bytes) -> None:
        self.status = int(written[9:12])


def protocol(settings: Any, keys: Any, revocations: Any, policy: Any) -> Callable[[str, str, str], _Answer]:
    """A `DecisionProtocol` on a stand-in transport, asked through the Envoy contract."""
    from types import SimpleNamespace

    from token_service.validator.app import ASGIApp, Validator
    from token_service.validator.protocol import DecisionProtocol

    validator = Validator(settings, policy, fetch=lambda url, timeout: {})
    validator.keys, validator.revocations = keys, revocations
    validator.decider.keys, validator.decider.revocations = keys, revocations
    written: list[bytes] = []
    transport = SimpleNamespace(write=written.append, is_closing=lambda: False, close=lambda: None)
    config = SimpleNamespace(loaded=True, loaded_app=ASGIApp(validator), timeout_keep_alive=5)
    state = SimpleNamespace(connections=set(), tasks=set(), total_requests=0)
    loop = asyncio.new_event_loop()
    soon: list[Callable[[], None]] = []  # the end of the loop's pass: the protocol writes there
    loop.call_soon = soon.append  # type: ignore[assignment,method-assign]
    conn = DecisionProtocol(config, state, _loop=loop)
    conn.connection_made(transport)  # type: ignore[arg-type]

    def ask(method: str, path: str, token: str) -> _Answer:
        conn.data_received(
            b"POST /auth/envoy%s HTTP/1.1\r\nhost: validator\r\nauthorization: Bearer %s\r\ncontent-length: 0\r\n\r\n"
            % (path.encode(), token.encode())
        )
        for callback in soon:
            callback()
        soon.clear()
        return _Answer(written.pop())

    return ask


def instructions(requests: int, extra: list[str]) -> int:
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
                *extra,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        return int(re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, help="default: 40,000 cached, 2,000 cold")
    parser.add_argument("--cold", action="store_true", help="never-seen RS256 tokens, the cache off")
    parser.add_argument("--http", action="store_true", help="through DecisionProtocol (the lean server)")
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)  # the cold tokens, for the measured program
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the measured program itself
    args = parser.parse_args()
    if args.run is not None:
        decide(args.run, args.tokens, args.http)
        return
    requests = args.requests or (COLD_TOKENS if args.cold else 40_000)
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--http"] if args.http else []
        if args.cold:
            cold_tokens(Path(tmp) / "tokens.txt")
            extra += ["--tokens", str(Path(tmp) / "tokens.txt")]
        base, loaded = instructions(0, extra), instructions(requests, extra)
    kind = "cold" if args.cold else "cached"
    print(
        f"{(loaded - base) / requests:,.0f} instructions per {kind} decision{' over HTTP' if args.http else ''} "
        f"({requests:,} requests; setup {base:,})"
    )


if __name__ == "__main__":
    main()
