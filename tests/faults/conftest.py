"""Fault-test fixtures: a deployment of real processes on the test's own database."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Deployment


@pytest.fixture
def deployment(db_url: str, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(db_url, tmp_path)
    yield d
    d.close()
