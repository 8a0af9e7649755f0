"""The compact revocation set, and the validator's independence from SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from token_service import store
from token_service.validator import revocations
from token_service.validator.revocations import RevocationSet, bucket_index


def test_names_match_the_store() -> None:
    assert (revocations.SCHEMA, revocations.NOTIFY_CHANNEL) == (store.SCHEMA, store.NOTIFY_CHANNEL)


def test_loaded_recent_and_pending_entries() -> None:
    revs = RevocationSet()
    revs.replace([("j1", "t1", 100.0), ("j2", None, 100.0), (None, "t3", 100.0), ("j4", None, 500.0)], now=200.0)
    assert revs.loaded and len(revs) == 5
    assert revs.is_revoked("j1", None, 200) and revs.is_revoked("other", "t1", 200)
    assert revs.is_revoked("j2", "t9", 200) and revs.is_revoked("x", "t3", 200)
    assert not revs.is_revoked("j3", "t2", 200)
    assert not revs.is_revoked("j4", None, 499) and revs.is_revoked("j4", None, 500)
    assert not revs.is_revoked("t1", "j1", 200)  # a jti is never matched as a token id, nor the reverse
    revs.add("j5", None, 300.0, now=300.0)
    revs.add(None, "t6", 900.0, now=300.0)
    assert revs.is_revoked("j5", None, 300) and not revs.is_revoked("x", "t6", 899)
    assert revs.is_revoked("x", "t6", 900)
    revs.replace([], now=1000.0)  # a resync drops what the database no longer has (pruned)
    assert not revs.is_revoked("j1", "t1", 1000) and len(revs) == 0


def test_version_changes_with_every_change_and_when_a_pending_entry_comes_due() -> None:
    revs = RevocationSet()
    seen = {revs.version}
    revs.replace([("j1", None, 100.0), ("j2", None, 500.0)], now=200.0)
    seen.add(revs.version)
    assert revs.version_at(499.0) == revs.version  # nothing came due yet: a "not revoked" answer still holds
    seen.add(revs.version_at(500.0))  # j2 comes due
    assert not revs.pending and revs.any_revoked(revs.keys("j2", None))
    revs.add("j3", None, 600.0, now=600.0)
    seen.add(revs.version)
    revs.add("j4", None, 900.0, now=600.0)  # pending: changes the version too (the next due time moved)
    seen.add(revs.version)
    assert len(seen) == 5 and revs.next_due == 900.0


def test_sets_of_two_processes_do_not_share_digests() -> None:
    a, b = RevocationSet(), RevocationSet()
    assert a.keys("j", "t") != b.keys("j", "t")


def test_a_validator_worker_does_not_load_sqlalchemy() -> None:
    code = (
        "import sys, token_service.validator.app, token_service.validator.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic', 'ckan'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


KEYS = st.integers(0, 2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(KEYS, max_size=3000, unique=True), st.lists(KEYS, max_size=50))
def test_indexed_lookups_agree_with_a_plain_set(loaded: list[int], probes: list[int]) -> None:
    revs = RevocationSet()
    revs.loaded_keys = array("Q", sorted(loaded))
    revs.index, revs.shift = bucket_index(revs.loaded_keys)
    edges = [0, 2**64 - 1, *(b << revs.shift for b in range(4)), *(k + d for k in loaded[:20] for d in (-1, 1))]
    for key in [*loaded, *probes, *(e for e in edges if 0 <= e < 2**64)]:
        assert revs.any_revoked((key,)) == (key in set(loaded)), key
