"""Decisions counted locally and flushed: the same exposition as prometheus_client's per-call API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from token_service.validator.metrics import LATENCY_BUCKETS, Metrics
from token_service.validator.reasons import Reason

# Bucket edges exactly, just either side of them, and beyond the last (+Inf).
SECONDS = [0.00005, 0.0001, 0.00010001, 0.0025, 0.003, 1.0, 1.5, 7.0, 0.0, 0.0001]
DECISIONS = [Reason.ALLOWED, Reason.REVOKED, Reason.ALLOWED, Reason.NO_ROUTE, Reason.ALLOWED] * 2


def _lines(exposition: bytes, prefix: str) -> list[str]:
    return sorted(
        line for line in exposition.decode().splitlines() if line.startswith(prefix) and "_created" not in line
    )


def test_flushed_counts_equal_per_call_observations() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    decisions = Counter("mltokens_validator_decisions", "d", ["status", "reason"], registry=reference)
    latency = Histogram("mltokens_validator_decision_seconds", "l", buckets=LATENCY_BUCKETS, registry=reference)
    for reason, seconds in zip(DECISIONS, SECONDS, strict=True):
        metrics.decision(reason, seconds)
        decisions.labels(str(reason.status), reason.value).inc()
        latency.observe(seconds)
    unflushed = generate_latest(metrics.registry)
    assert _lines(unflushed, "mltokens_validator_decisions_total") == []
    assert "mltokens_validator_decision_seconds_count 0.0" in _lines(unflushed, "mltokens_validator_decision_seconds")
    ours = metrics.exposition()  # flushes first
    for prefix in ("mltokens_validator_decisions_total", "mltokens_validator_decision_seconds_"):
        assert _lines(ours, prefix) == _lines(generate_latest(reference), prefix)
        assert _lines(ours, prefix)


def test_flush_adds_to_what_earlier_flushes_moved() -> None:
    metrics = Metrics()
    metrics.decision(Reason.ALLOWED, 0.001)
    metrics.flush()
    metrics.flush()  # nothing new: changes nothing
    metrics.decision(Reason.ALLOWED, 0.3)
    text = metrics.exposition().decode()
    assert 'mltokens_validator_decisions_total{reason="allowed",status="200"} 2.0' in text
    assert 'mltokens_validator_decision_seconds_bucket{le="0.001"} 1.0' in text
    assert 'mltokens_validator_decision_seconds_bucket{le="+Inf"} 2.0' in text
    assert "mltokens_validator_decision_seconds_sum 0.301" in text
