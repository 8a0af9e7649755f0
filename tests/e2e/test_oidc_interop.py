"""Interop with an independent OIDC provider (npm `oidc-provider`, client-credentials grant).

Its JWT access tokens are accepted when its issuer URL is configured (keys found by
discovery, scopes checked by the policy) and refused when it is not. node_modules must
have been installed at install time (`npm ci --prefix tests/e2e/oidc_provider`); this
test never downloads anything.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

from tests.support.stack import (
    Running,
    ServiceSpec,
    free_port,
    issuer_spec,
    mltokens,
    start,
    validator_spec,
    write_config,
)

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
PREDICT = "/auth/envoy/v1/models/sentiment/predict"
POLICY = """
routes:
  - path: /v1/models/{model}/predict
    methods: [POST]
    scopes: ["model:{model}:predict"]
"""


def _provider(tmp_path: Path, trailing_slash: bool = False) -> Iterator[str]:
    """The provider's issuer URL (its tokens' `iss`) while it runs."""
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"oidc-provider is not installed: run `npm ci --prefix {PROVIDER_DIR}` at install time")
    node = shutil.which("node")
    assert node, "node (Node.js 20+) is required for the oidc-provider interop test"
    port = free_port()
    issuer = f"http://127.0.0.1:{port}" + ("/" if trailing_slash else "")
    spec = ServiceSpec(
        "oidc-provider",
        [node, str(PROVIDER_DIR / "server.mjs"), str(port), issuer],
        f"http://127.0.0.1:{port}/.well-known/openid-configuration",
        cwd=PROVIDER_DIR,
    )
    running = start(spec, tmp_path / "logs")
    yield issuer
    running.stop()


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[str]:
    yield from _provider(tmp_path)


@pytest.fixture
def slash_provider(tmp_path: Path) -> Iterator[str]:
    """An issuer whose URL ends in `/`, as Auth0 publishes `https://<tenant>/`."""
    yield from _provider(tmp_path, trailing_slash=True)


def client_credentials_token(provider: str, scope: str) -> str:
    discovery = provider.rstrip("/") + "/.well-known/openid-configuration"
    token_endpoint = requests.get(discovery, timeout=5).json()["token_endpoint"]
    r = requests.post(
        token_endpoint,
        data={"grant_type": "client_credentials", "scope": scope},
        auth=("model-client", "model-client-secret"),
        timeout=5,
    )
    r.raise_for_status()
    return r.json()["access_token"]


@pytest.fixture
def local_issuer(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Our own issuer too, so the validator is configured with two issuers at once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path / "issuer.toml", db_url, url, tmp_path / "unused.yaml")
    subprocess.run(mltokens(config, "keys", "rotate"), check=True, capture_output=True, timeout=60)
    running: Running = start(issuer_spec(config, port), tmp_path / "logs")
    yield url, config
    running.stop()


def run_validator(tmp_path: Path, db_url: str, issuers: list[str], name: str) -> tuple[str, Running]:
    policy = tmp_path / "scopes.yaml"
    policy.write_text(POLICY)
    config = write_config(
        tmp_path / f"{name}.toml",
        db_url,
        issuers[0],
        policy,
        issuers=issuers,
        heartbeat_interval="200ms",
        max_staleness="3s",
    )
    port = free_port()
    return f"http://127.0.0.1:{port}", start(validator_spec(config, port, name=name), tmp_path / "logs")


def decide(validator: str, token: str) -> int:
    return requests.post(validator + PREDICT, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code


def test_provider_tokens_accepted_only_when_its_issuer_is_configured(
    provider: str, local_issuer: tuple[str, Path], db_url: str, tmp_path: Path
) -> None:
    local_url, _ = local_issuer
    trusting, trusting_proc = run_validator(tmp_path, db_url, [local_url, provider], "trusting")
    strict, strict_proc = run_validator(tmp_path, db_url, [local_url], "strict")
    try:
        token = client_credentials_token(provider, "model:sentiment:predict")
        assert decide(trusting, token) == 200
        assert decide(strict, token) == 401
        assert "deny 401 unknown_issuer" in strict_proc.log_path.read_text()
        vision_only = client_credentials_token(provider, "model:vision:predict")
        assert decide(trusting, vision_only) == 403
    finally:
        trusting_proc.stop()
        strict_proc.stop()


def test_an_issuer_url_ending_in_a_slash_is_trusted_exactly_as_configured(
    slash_provider: str, db_url: str, tmp_path: Path
) -> None:
    """Discovery at `{issuer without the slash}/.well-known/openid-configuration`; the
    document's `issuer` and the tokens' `iss` compared with the URL exactly as written."""
    assert slash_provider.endswith("/")
    with_slash, with_slash_proc = run_validator(tmp_path, db_url, [slash_provider], "with-slash")
    try:
        token = client_credentials_token(slash_provider, "model:sentiment:predict")
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == slash_provider
        assert decide(with_slash, token) == 200
    finally:
        with_slash_proc.stop()
    # Without the slash it is another issuer: discovery names a different one, so no keys
    # load (the validator never becomes ready) and its tokens are refused.
    config = write_config(
        tmp_path / "without-slash.toml",
        db_url,
        slash_provider.rstrip("/"),
        tmp_path / "p.yaml",
        issuers=[slash_provider.rstrip("/")],
    )
    (tmp_path / "p.yaml").write_text(POLICY)
    port = free_port()
    spec = validator_spec(config, port, name="without-slash")
    with pytest.raises(RuntimeError, match="discovery names issuer"):
        start(spec, tmp_path / "logs", timeout=8)
