"""Maintenance tools: generators of docs/cli.md and docs/configuration.md (`make docs`)."""
