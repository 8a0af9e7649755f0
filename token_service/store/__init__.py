"""PostgreSQL token store: tables, migrations and the database handle."""

from .db import Store
from .models import (
    NOTIFY_CHANNEL,
    SCHEMA,
    AuditEvent,
    ExpiryNotice,
    Revocation,
    SigningKey,
    Token,
    UsageBatch,
    UsageDaily,
)

__all__ = [
    "Store",
    "NOTIFY_CHANNEL",
    "SCHEMA",
    "AuditEvent",
    "ExpiryNotice",
    "Revocation",
    "SigningKey",
    "Token",
    "UsageBatch",
    "UsageDaily",
]
