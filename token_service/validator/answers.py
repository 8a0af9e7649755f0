"""Answers decided before and given again by the lean server (protocol.py, `_DECIDED`), and their tally.

An answer given again counts in the metrics and usage as any decision does, but not by two
Python calls an answer (`Metrics.decision`, `UsageRecorder.record`): its entry and the `Tally`
count it, in C fields in the compiled build (answers.pxd), and `Validator.fold` moves the counts
into the metrics and usage once a second and at shutdown (docs/validator.md, "Answers decided
before").
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from .metrics import LATENCY_BUCKETS, Metrics
from .reasons import Reason
from .usage import UsageRecorder

_FIRST_BUCKET = LATENCY_BUCKETS[0]


class Remembered:
    """An allowed decision's whole answer (`data`), given again while `verified`, the cached
    token's entry it was decided from, is current; and its uses since the last fold."""

    def __init__(self, verified: Any, token_id: str | None, data: bytes) -> None:
        self.verified = verified
        self.token_id = token_id
        self.data = data
        self.uses = 0
        self.last_used = 0.0  # wall time of the last use


class Tally:
    """The answers given again since the last `fold`: their latency and their tokens' uses."""

    def __init__(self) -> None:
        self.used: list[Remembered] = []  # the entries with uses to fold (those with a token id)
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # as `Metrics.decisions_in_buckets` takes them
        self.seconds = 0.0

    def count(self, entry: Remembered, now: float, seconds: float) -> None:
        """One answer of `entry` given again at wall time `now`, taking `seconds`."""
        if entry.token_id is not None:
            if entry.uses == 0:
                self.used.append(entry)
            entry.uses += 1
            entry.last_used = now
        if seconds <= _FIRST_BUCKET:  # almost always: a few microseconds
            self.latency[0] += 1
        else:
            self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def fold(self, metrics: Metrics, usage: UsageRecorder) -> None:
        """Move the counts into `metrics` and `usage`, and start again from nothing."""
        used, self.used = self.used, []
        for entry in used:
            usage.record(entry.token_id, entry.last_used, entry.uses)  # type: ignore[arg-type]
            entry.uses = 0
        latency, self.latency = self.latency, [0] * (len(LATENCY_BUCKETS) + 1)
        seconds, self.seconds = self.seconds, 0.0
        metrics.decisions_in_buckets(Reason.ALLOWED, latency, seconds)
