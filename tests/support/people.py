"""The owners, actors and roles the core lifecycle tests act with."""

from __future__ import annotations

from token_service.issuers import Owner
from token_service.lifecycle import Actor

ALICE = Owner("u-alice", "alice")
BOB = Owner("u-bob", "bob")
AS_ALICE = Actor(ALICE.id, ALICE.name)
AS_BOB = Actor(BOB.id, BOB.name)
ADMIN = Actor("u-admin", "admin", is_admin=True)
PREDICT = "model:sentiment:predict"
TRAIN = "model:sentiment:train"
