"""Alembic revisions of the token store (a package so that setuptools ships it; Alembic skips this file)."""
