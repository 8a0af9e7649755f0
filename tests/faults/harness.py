"""Real processes for fault tests: a local issuer behind a proxy that can be cut or slowed,
validators (`mltokens serve`) whose PostgreSQL connection can go through a cuttable proxy,
a mix of good and bad tokens, and a traffic thread that records every answer.

Everything listens on 127.0.0.1. The shared PostgreSQL server is never restarted: an
outage is a cut TcpProxy (a partition) or pg_terminate_backend (what a restart looks
like to clients); each test says which.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.support.stack import (
    Running,
    TcpProxy,
    free_port,
    issuer_spec,
    start,
    validator_spec,
    write_config,
)
from tests.validator import tokens
from token_service.config import Settings
from token_service.issuers import Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle, utcnow
from token_service.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO_POLICY = ROOT / "devstack" / "policy.yaml"
PREDICT = "/v1/models/sentiment/predict"
FAST = {
    "heartbeat_interval": "200ms",
    "max_staleness": "2s",
    "usage_flush_interval": "500ms",
    "jwks_min_refetch_interval": "1s",
    "jwks_timeout": "1s",
}
ALICE = Owner("u-alice", "alice")
NEVER_ACCEPTED = ("revoked", "expired", "forged", "alg_none")


def via(url: str, proxy: TcpProxy, port: int) -> str:
    """`url` with 127.0.0.1:`port` replaced by the proxy's port."""
    out = re.sub(rf"127\.0\.0\.1:{port}\b", f"127.0.0.1:{proxy.port}", url)
    assert out != url, url
    return out


class Deployment:
    """An issuer process (reached through `issuer_proxy`) and validator processes on one database."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        self.db_url, self.workdir = db_url, workdir
        self.issuer_port = free_port()
        self.issuer_proxy = TcpProxy(self.issuer_port)
        self.issuer_url = f"http://127.0.0.1:{self.issuer_proxy.port}"
        self.config = write_config(workdir / "issuer.toml", db_url, self.issuer_url, DEMO_POLICY, **FAST)
        self.settings = Settings.load(self.config, env={})
        self.store = Store(db_url)
        self.issuer = LocalIssuer(self.settings, self.store, utcnow)
        self.lifecycle = Lifecycle(self.settings, self.store, self.issuer)
        self.issuer.keys.rotate(utcnow())
        self.proxies: list[TcpProxy] = [self.issuer_proxy]
        self.running: list[Running] = [start(issuer_spec(self.config, self.issuer_port), workdir / "logs")]

    def proxy(self, port: int) -> TcpProxy:
        p = TcpProxy(port)
        self.proxies.append(p)
        return p

    def validator(
        self,
        name: str,
        database_url: str | None = None,
        workers: int = 1,
        wait: bool = True,
        policy: Path = DEMO_POLICY,
        server: str = "lean",
        **settings: Any,
    ) -> str:
        """Start `mltokens serve`; with wait=False only until /healthz answers (not necessarily ready)."""
        config = write_config(
            self.workdir / f"{name}.toml", database_url or self.db_url, self.issuer_url, policy, **{**FAST, **settings}
        )
        port = free_port()
        spec = validator_spec(config, port, workers, name=name, server=server)
        if not wait:
            spec.ready_url = f"http://127.0.0.1:{port}/healthz"
        self.running.append(start(spec, self.workdir / "logs"))
        return f"http://127.0.0.1:{port}"

    def token(self, name: str, **kw: Any) -> tuple[str, str]:
        issued = self.lifecycle.create(ALICE, name, ["model:sentiment:predict"], **kw)
        return issued.secret, issued.info.id

    def bad_tokens(self) -> dict[str, str]:
        """One token of each kind a validator must never accept, and a good one."""
        good, _ = self.token("good")
        revoked, revoked_id = self.token("revoked")
        self.lifecycle.revoke(revoked_id, Actor.operator())
        header, claims, _ = tokens.segments(good)
        kid, key = self.issuer.keys.signing_key()
        past = int((utcnow() - timedelta(hours=2)).timestamp())
        expired = jwt.encode(
            {**claims, "iat": past - 60, "exp": past, "jti": "expired-jti"},
            key,
            algorithm=header["alg"],
            headers={"kid": kid},
        )
        return {
            "valid": good,
            "revoked": revoked,
            "expired": expired,
            "forged": tokens.resign(good, tokens.attacker_key()),
            "alg_none": tokens.alg_none(good),
        }

    def close(self) -> None:
        for r in reversed(self.running):
            r.stop()
        for p in self.proxies:
            p.close()
        self.store.dispose()


@pytest.fixture
def deployment(db_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of real processes on the test's own database (used by tests/faults and the feed tests)."""
    d = Deployment(db_url, tmp_path)
    yield d
    d.close()


def predict(validator: str, token: str | None, timeout: float = 5, session: Any = requests) -> requests.Response:
    """Ask about a POST to the model's predict route by the forward-auth contract, which every server
    decides (granian cannot serve the Envoy prefix contract: docs/validator.md)."""
    headers = {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": PREDICT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return session.post(validator + "/auth/forward", headers=headers, timeout=timeout)


def status(validator: str, token: str | None, timeout: float = 5) -> int:
    return predict(validator, token, timeout).status_code


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `check()`; the seconds it took, or the test fails."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass(frozen=True)
class Answer:
    kind: str
    validator: str
    sent: float  # monotonic
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)


@dataclass
class Traffic:
    """Requests with every token kind to every validator, in a thread, until stopped."""

    validators: list[str]
    tokens: dict[str, str]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            for kind, token in self.tokens.items():
                for v in self.validators:
                    sent = time.monotonic()
                    try:
                        code = predict(v, token, 3, session).status_code
                    except requests.RequestException:
                        code = 0
                        session = requests.Session()
                    self.answers.append(Answer(kind, v, sent, code))
        session.close()

    def statuses(self, kind: str, since: float = float("-inf")) -> set[int]:
        return {a.status for a in self.answers if a.kind == kind and a.sent >= since}

    def assert_never_accepted(self, also: dict[str, float] | None = None) -> None:
        """No revoked, expired or badly signed token was ever answered 200; nor a token of `also`
        (kind → monotonic time from which it must be refused)."""
        limits = {kind: float("-inf") for kind in NEVER_ACCEPTED} | (also or {})
        wrong = [a for a in self.answers if a.status == 200 and a.kind in limits and a.sent >= limits[a.kind]]
        assert not wrong, f"{len(wrong)} wrong acceptance(s), first: {wrong[:5]}"


@contextmanager
def traffic(validators: list[str], token_kinds: dict[str, str]) -> Iterator[Traffic]:
    t = Traffic(validators, token_kinds)
    thread = threading.Thread(target=t.run, daemon=True)
    thread.start()
    try:
        yield t
    finally:
        t.stop.set()
        thread.join(10)
        assert not thread.is_alive(), "traffic thread did not stop"
