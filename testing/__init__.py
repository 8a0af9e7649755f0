"""Test infrastructure: servers and launchers the tests use, not tests and not the product."""
