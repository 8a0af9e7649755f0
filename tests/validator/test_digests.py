"""SHA-256 as the validator computes it (digests.py): OpenSSL's, called directly when compiled,
hashlib's as pure Python; either way the same digest as hashlib's, call after call."""

from __future__ import annotations

import hashlib
import threading

from hypothesis import given
from hypothesis import strategies as st

from token_service.validator.digests import sha256_digest


def test_lengths_around_the_block_size_and_a_large_input() -> None:
    pattern = bytes(range(256))
    for length in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 850, 1_000, 10_000_000):
        data = (pattern * (length // 256 + 1))[:length]
        assert sha256_digest(data) == hashlib.sha256(data).digest(), length


@given(st.lists(st.binary(max_size=2_000), min_size=1, max_size=5))
def test_each_digest_is_its_own_input_s_alone(inputs: list[bytes]) -> None:
    """The compiled build reuses one context: nothing of a digest carries into the next."""
    assert [sha256_digest(data) for data in inputs] == [hashlib.sha256(data).digest() for data in inputs]


def test_threads_hashing_at_once_get_their_own_digests() -> None:
    inputs = [bytes([i]) * (500 + i) for i in range(4)]
    expected = [hashlib.sha256(data).digest() for data in inputs]
    wrong: list[int] = []

    def hash_many(i: int) -> None:
        for _ in range(2_000):
            if sha256_digest(inputs[i]) != expected[i]:
                wrong.append(i)

    threads = [threading.Thread(target=hash_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
