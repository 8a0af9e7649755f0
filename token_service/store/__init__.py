"""PostgreSQL token store: tables, migrations and the database handle."""

from .db import Store
from .models import NOTIFY_CHANNEL, SCHEMA, AuditEvent, Revocation, SigningKey, Token, UsageBatch

__all__ = ["Store", "NOTIFY_CHANNEL", "SCHEMA", "AuditEvent", "Revocation", "SigningKey", "Token", "UsageBatch"]
