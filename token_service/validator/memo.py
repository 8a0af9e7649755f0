"""Bounded memos for answers that repeat (headers, routes, encoded responses)."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store `value` under `key`, emptying the memo first when it holds `limit` entries.

    Emptying rather than evicting one by one: the working set (a few tokens' headers, a few
    routes) refills it at once, and random keys from a client can never grow it.
    """
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
