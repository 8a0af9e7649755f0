"""Soak: a mixed workload against two validators for many minutes, counting wrong decisions.

    .venv/bin/python -m bench.soak [--minutes 10] [--connections 8] [--revoke-every 0.2]

Starts the local issuer and two validator processes (`mltokens serve`, one worker each)
on a fresh database, then keeps `--connections` keep-alive connections per validator
busy with a mix of tokens:

| kind        | share | expected answer                                                   |
|-------------|-------|-------------------------------------------------------------------|
| valid       | 35%   | 200 (never revoked)                                               |
| victim      | 25%   | 200 before its revoke started, 401 from `--bound` after its commit |
| revoked     | 10%   | 401 (revoked before the run)                                      |
| expired     | 10%   | 401 (`exp` two hours ago, correctly signed)                       |
| expiring    | 5%    | 200 until `exp` − leeway, 401 after `exp` + leeway                |
| forged      | 10%   | 401 (re-signed by another key, same `kid`)                        |
| alg_none    | 5%    | 401                                                               |

Meanwhile a thread revokes one victim every `--revoke-every` seconds through the real
lifecycle (LISTEN/NOTIFY to both validators) and creates a fresh victim in its place,
so revocations and never-seen tokens arrive continuously. Every answer is checked
against the table; a wrong decision is an accepted token that must be refused or a
refused token that must be accepted (503s and connection errors are counted apart).
Every `--sample` seconds it prints decisions/s, p50/p99 (client side, Python asyncio
client on the same machine) and the RSS of each validator worker; at the end a summary
with RSS growth after the first minute. Not part of the test run; the bar is zero wrong
decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import jwt

from bench.run import database, pct, rss_mb, worker_pid
from devstack.services import Running, free_port, issuer_spec, start, validator_spec
from tests.support.stack import write_config
from tests.validator import tokens as forge
from token_service.config import Settings
from token_service.issuers import Grant, Owner
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import Actor, Lifecycle
from token_service.store import Store

ROOT = Path(__file__).resolve().parents[1]
PATH = "/auth/envoy/v1/models/sentiment/predict"
ROLE = "model:sentiment:predict"
OWNER = Owner("u-soak", "soak")
MIX = (
    ("valid", 35),
    ("victim", 25),
    ("revoked", 10),
    ("expired", 10),
    ("expiring", 5),
    ("forged", 10),
    ("alg_none", 5),
)


@dataclass
class Victim:
    token: str
    token_id: str
    revoke_started: float = float("inf")  # monotonic
    committed: float = float("inf")


@dataclass
class Pool:
    """Tokens by kind; lists are replaced or appended atomically (GIL), so readers need no lock."""

    fixed: dict[str, list[str]]
    expiring: list[tuple[str, float]]  # (token, exp as epoch seconds)
    victims: list[Victim]
    live: list[Victim] = field(default_factory=list)  # victims not yet revoked


@dataclass
class Tally:
    answers: int = 0
    by_kind: dict[tuple[str, int], int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    in_window: int = 0  # victims accepted between their commit and the bound
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


class Soak:
    def __init__(self, lifecycle: Lifecycle, issuer: LocalIssuer, leeway: float, bound: float) -> None:
        self.lifecycle, self.issuer, self.leeway, self.bound = lifecycle, issuer, leeway, bound
        self.tally = Tally()
        self.stop = threading.Event()
        self.revocations = 0
        self.pool = self._pool()
        self.weights = [w for _, w in MIX]
        self.kinds = [k for k, _ in MIX]

    def _token(self, name: str) -> tuple[str, str]:
        issued = self.lifecycle.create(OWNER, f"{name}-{uuid.uuid4().hex[:8]}", [ROLE])
        return issued.secret, issued.info.id

    def _pool(self) -> Pool:
        now = datetime.now(UTC).replace(microsecond=0)
        valid = [self._token("valid")[0] for _ in range(10)]
        revoked = []
        for _ in range(10):
            token, token_id = self._token("revoked")
            self.lifecycle.revoke(token_id, Actor.operator())
            revoked.append(token)
        kid, key = self.issuer.keys.signing_key()
        expired, expiring = [], []
        for i in range(10):
            header, claims, _ = forge.segments(valid[i])
            past = int((now - timedelta(hours=2)).timestamp())
            expired.append(
                jwt.encode(
                    {**claims, "iat": past - 60, "exp": past, "jti": f"expired-{i}"},
                    key,
                    algorithm=header["alg"],
                    headers={"kid": kid},
                )
            )
        for i in range(20):  # exp spread over the first ten minutes (plus the leeway)
            exp = now + timedelta(seconds=45 + 30 * i)
            grant = Grant(str(uuid.uuid4()), f"expiring-{i}", OWNER, (ROLE,), now, exp)
            expiring.append((self.issuer.issue(grant).secret, exp.timestamp()))
        attacker = forge.attacker_key()
        forged = [forge.resign(t, attacker) for t in valid]
        victims = [Victim(*self._token("victim")) for _ in range(20)]
        return Pool(
            {
                "valid": valid,
                "revoked": revoked,
                "expired": expired,
                "forged": forged,
                "alg_none": [forge.alg_none(t) for t in valid],
            },
            expiring,
            victims,
            list(victims),
        )

    # -- revocations arriving continuously ---------------------------------------------

    def revoker(self, every: float) -> None:
        while not self.stop.wait(every):
            live = self.pool.live
            if not live:
                continue
            victim = live[random.randrange(len(live))]
            victim.revoke_started = time.monotonic()
            self.lifecycle.revoke(victim.token_id, Actor.operator())
            victim.committed = time.monotonic()
            self.revocations += 1
            self.pool.live = [v for v in self.pool.live if v is not victim]
            fresh = Victim(*self._token("victim"))
            self.pool.victims = self.pool.victims[-200:] + [fresh]  # recent victims stay in the mix
            self.pool.live = self.pool.live + [fresh]

    # -- the oracle --------------------------------------------------------------------

    def pick(self) -> tuple[str, str, object]:
        kind = random.choices(self.kinds, self.weights)[0]
        if kind == "victim":
            victim = random.choice(self.pool.victims)
            return kind, victim.token, victim
        if kind == "expiring":
            token, exp = random.choice(self.pool.expiring)
            return kind, token, exp
        return kind, random.choice(self.pool.fixed[kind]), None

    def judge(self, kind: str, meta: object, sent_mono: float, received: float, sent_wall: float, status: int) -> None:
        t = self.tally
        t.answers += 1
        t.by_kind[(kind, status)] = t.by_kind.get((kind, status), 0) + 1
        if status not in (200, 401):
            t.errors += 1
            return
        ok = True
        if kind == "valid":
            ok = status == 200
        elif kind == "victim":
            assert isinstance(meta, Victim)
            if sent_mono < meta.revoke_started:  # a 401 is right if the revoke began while in flight
                ok = status == 200 or received >= meta.revoke_started
            elif sent_mono > meta.committed + self.bound:
                ok = status == 401
            elif status == 200 and sent_mono >= meta.committed:
                t.in_window += 1
        elif kind == "expiring":
            assert isinstance(meta, float)
            if sent_wall < meta - self.leeway - 1:
                ok = status == 200
            elif sent_wall > meta + self.leeway + 1:
                ok = status == 401
        else:
            ok = status == 401
        if not ok:
            t.wrong.append(f"{kind} answered {status} at +{sent_mono:.3f}")

    # -- load ----------------------------------------------------------------------------

    async def connection(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not self.stop.is_set():
                kind, token, meta = self.pick()
                request = (
                    f"POST {PATH} HTTP/1.1\r\nHost: validator\r\nAuthorization: Bearer {token}\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
                sent_mono, sent_wall = time.monotonic(), time.time()
                try:
                    writer.write(request)
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                    self.tally.errors += 1
                    writer.close()
                    await asyncio.sleep(0.1)
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                received = time.monotonic()
                self.tally.latencies.append(received - sent_mono)
                self.judge(kind, meta, sent_mono, received, sent_wall, status)
        finally:
            writer.close()

    async def drive(
        self, ports: list[int], connections: int, seconds: float, sample: float, workers: list[Running]
    ) -> list[tuple[float, float, float, float, list[float]]]:
        tasks = [asyncio.create_task(self.connection(p)) for p in ports for _ in range(connections)]
        samples = []
        started = last = time.monotonic()
        answers_before = 0
        while time.monotonic() - started < seconds:
            await asyncio.sleep(sample)
            now = time.monotonic()
            lat, self.tally.latencies = self.tally.latencies, []
            rate = (self.tally.answers - answers_before) / (now - last)
            answers_before, last = self.tally.answers, now
            rss = [rss_mb(worker_pid(w)) for w in workers]
            gauges = [await asyncio.to_thread(held, p) for p in ports]
            row = (now - started, rate, pct(lat, 50) * 1000 if lat else 0.0, pct(lat, 99) * 1000 if lat else 0.0, rss)
            samples.append(row)
            print(
                f"{row[0]:7.0f}s {rate:8.0f}/s p50 {row[2]:6.2f} ms p99 {row[3]:7.2f} ms RSS "
                + " ".join(f"{r:6.1f}" for r in rss)
                + " MB (cached tokens/revocations "
                + " ".join(f"{c:.0f}/{r:.0f}" for c, r in gauges)
                + f") wrong {len(self.tally.wrong)} "
                f"errors {self.tally.errors} revoked {self.revocations}",
                flush=True,
            )
        self.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return samples


def held(port: int) -> tuple[float, float]:
    """(verified tokens cached, revocation set entries) from a validator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = dict(
        re.findall(
            r"^(mltokens_validator_token_cache_entries|mltokens_validator_revocations) (\S+)$", text, re.MULTILINE
        )
    )
    return float(values["mltokens_validator_token_cache_entries"]), float(values["mltokens_validator_revocations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections per validator")
    parser.add_argument("--revoke-every", type=float, default=0.2, help="seconds between revocations")
    parser.add_argument(
        "--bound", type=float, default=1.0, help="seconds after a revoke's commit from which every answer must be 401"
    )
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between report lines")
    parser.add_argument(
        "--cache-size",
        type=int,
        default=10000,
        help="validator cache_size (verified tokens kept); smaller shows where RSS levels off",
    )
    args = parser.parse_args()

    with TemporaryDirectory(prefix="mlt-soak-") as tmp, database(0) as db_url:
        work = Path(tmp)
        issuer_port = free_port()
        issuer_url = f"http://127.0.0.1:{issuer_port}"
        config = write_config(
            work / "soak.toml",
            db_url,
            issuer_url,
            ROOT / "devstack" / "policy.yaml",
            heartbeat_interval="500ms",
            max_staleness="5s",
            cache_size=args.cache_size,
        )
        settings = Settings.load(config, env={})
        store = Store(db_url)
        issuer = LocalIssuer(settings, store, lambda: datetime.now(UTC))
        issuer.keys.rotate(datetime.now(UTC))
        lifecycle = Lifecycle(
            settings.replace(max_tokens_per_owner=1_000_000, max_creations_per_hour=1_000_000), store, issuer
        )
        running = [start(issuer_spec(config, issuer_port), work / "logs")]
        try:
            ports = [free_port(), free_port()]
            validators = [
                start(validator_spec(config, p, 1, name=f"validator-{i}"), work / "logs") for i, p in enumerate(ports)
            ]
            running += validators
            soak = Soak(lifecycle, issuer, settings.leeway.total_seconds(), args.bound)
            revoker = threading.Thread(target=soak.revoker, args=(args.revoke_every,), daemon=True)
            revoker.start()
            print(
                f"soak: {args.minutes:g} min, 2 validators x {args.connections} connections, "
                f"a revocation every {args.revoke_every}s, cache_size {args.cache_size}",
                flush=True,
            )
            samples = asyncio.run(soak.drive(ports, args.connections, args.minutes * 60, args.sample, validators))
            revoker.join(10)
        finally:
            for r in reversed(running):
                r.stop()
            store.dispose()
        report(soak, samples, args)
    sys.exit(1 if soak.tally.wrong else 0)


def report(soak: Soak, samples: list[tuple[float, float, float, float, list[float]]], args: argparse.Namespace) -> None:
    t = soak.tally
    duration = samples[-1][0] if samples else 0.0
    print(
        f"\n{t.answers} decisions in {duration:.0f}s: {t.answers / max(duration, 1):.0f}/s; "
        f"p99 per sample {min(s[3] for s in samples):.2f}-{max(s[3] for s in samples):.2f} ms"
    )
    for kind, _ in MIX:
        counts = {status: n for (k, status), n in sorted(t.by_kind.items()) if k == kind}
        print(f"  {kind:9s} " + ", ".join(f"{status}: {n}" for status, n in counts.items()))
    after_warmup = [s for s in samples if s[0] >= 60] or samples
    for i in range(len(samples[0][4]) if samples else 0):
        first, last = after_warmup[0][4][i], after_warmup[-1][4][i]
        print(
            f"  validator-{i} worker RSS {first:.1f} -> {last:.1f} MB after the first minute "
            f"({last - first:+.1f} MB; peak {max(s[4][i] for s in samples):.1f})"
        )
    print(
        f"  revocations during the run: {soak.revocations}; "
        f"victims accepted within {args.bound}s of their commit (propagation window): {t.in_window}"
    )
    print(f"WRONG DECISIONS: {len(t.wrong)}; other answers (503, errors): {t.errors}")
    for line in t.wrong[:20]:
        print("  " + line)


if __name__ == "__main__":
    main()
