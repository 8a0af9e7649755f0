"""Fault-test fixtures: a deployment of real processes on the test's own database."""

from tests.faults.harness import deployment

__all__ = ["deployment"]
