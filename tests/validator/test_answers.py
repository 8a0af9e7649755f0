"""The tally of answers given again: folded, the same metrics and usage as a call for each answer."""

from __future__ import annotations

from token_service.validator.answers import Remembered, Tally
from token_service.validator.metrics import Metrics
from token_service.validator.reasons import Reason
from token_service.validator.usage import UsageRecorder

DATABASE_URL = "postgresql://unused@127.0.0.1/unused"  # never connected: nothing is flushed


def _counts(metrics: Metrics) -> bytes:
    return b"\n".join(
        line
        for line in metrics.exposition().splitlines()
        if line.startswith((b"mltokens_validator_decisions_total", b"mltokens_validator_decision_seconds_"))
        and b"_created" not in line
    )


def test_folded_counts_equal_a_call_for_each_answer() -> None:
    alice, bob, other_issuer = (
        Remembered(object(), "t-alice", b"a"),
        Remembered(object(), "t-bob", b"b"),
        Remembered(object(), None, b"c"),
    )
    # (entry, wall time, seconds): bucket edges, a slow answer (+Inf included), a use older than one before
    answers = [
        (alice, 1000.0, 0.00002),
        (bob, 1001.0, 0.0001),
        (alice, 1002.0, 0.00010001),
        (other_issuer, 1003.0, 0.003),
        (alice, 1004.0, 2.0),
    ]
    later = [(bob, 1005.0, 0.00003), (alice, 1006.0, 0.0004)]
    tally, metrics, usage = Tally(), Metrics(), UsageRecorder(DATABASE_URL, 30.0)
    reference, reference_usage = Metrics(), UsageRecorder(DATABASE_URL, 30.0)
    for batch in (answers, later):
        before = ({token: list(counts) for token, counts in usage.pending.items()}, _counts(metrics))
        for entry, now, seconds in batch:
            tally.count(entry, now, seconds)
            reference.decision(Reason.ALLOWED, seconds)
            if entry.token_id is not None:
                reference_usage.record(entry.token_id, now)
        assert (usage.pending, _counts(metrics)) == before  # nothing counted before the fold
        tally.fold(metrics, usage)
        assert tally.used == [] and alice.uses == bob.uses == 0
        assert usage.pending == reference_usage.pending
        assert _counts(metrics) == _counts(reference)
    assert usage.pending == {"t-alice": [4, 1006.0], "t-bob": [2, 1005.0]}
    assert b'decisions_total{reason="allowed",status="200"} 7.0' in _counts(metrics)
    tally.fold(metrics, usage)  # nothing new: changes nothing
    assert usage.pending == reference_usage.pending and _counts(metrics) == _counts(reference)


def test_a_use_folded_late_never_moves_the_last_use_back() -> None:
    usage = UsageRecorder(DATABASE_URL, 30.0)
    usage.record("t", 2000.0)
    usage.record("t", 1990.0, 3)  # answers given again before it, folded after it
    assert usage.pending == {"t": [4, 2000.0]}
