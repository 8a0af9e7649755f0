"""The token store's tables, in a PostgreSQL schema of their own (`mltokens`).

A schema of our own keeps us clear of CKAN's tables and of CKAN's `alembic_version`
when both live in one database.

Declared with `declarative_base()` and `Column`, which SQLAlchemy 1.4 and 2.0 both map the
same way: the store lives in CKAN's virtualenv, and CKAN 2.11 pins SQLAlchemy 1.4 while
2.12 pins 2.0 (2.0's `DeclarativeBase`/`mapped_column` do not exist in 1.4). The `Mapped[...]`
annotations are for type checkers only.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, declarative_base

SCHEMA = "mltokens"
NOTIFY_CHANNEL = "mltokens_revocation"


Base: Any = declarative_base(metadata=MetaData(schema=SCHEMA))


class Token(Base):
    """One ML API token. The token string itself is never stored."""

    __tablename__ = "token"

    id: Mapped[str] = Column(String(64), primary_key=True)
    owner_id: Mapped[str] = Column(String(128), nullable=False)
    owner_name: Mapped[str] = Column(String(255), nullable=False)
    owner_kind: Mapped[str] = Column(String(16), nullable=False, server_default="user")
    subject: Mapped[str] = Column(String(255), nullable=False)
    name: Mapped[str] = Column(String(200), nullable=False)
    kind: Mapped[str] = Column(String(32), nullable=False, server_default="access_token")
    issuer: Mapped[str] = Column(String(32), nullable=False)
    client_id: Mapped[str | None] = Column(String(255))
    roles: Mapped[list[str]] = Column(ARRAY(Text), nullable=False, server_default="{}")
    ttl_seconds: Mapped[int] = Column(Integer, nullable=False)
    created_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    issued_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False)
    renew_count: Mapped[int] = Column(Integer, nullable=False, server_default="0")
    last_used_at: Mapped[datetime | None] = Column(DateTime(timezone=True))
    use_count: Mapped[int] = Column(BigInteger, nullable=False, server_default="0")
    status: Mapped[str] = Column(String(16), nullable=False, server_default="active")
    revoked_at: Mapped[datetime | None] = Column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = Column(String(255))
    revoke_reason: Mapped[str | None] = Column(Text)
    current_jti: Mapped[str] = Column(String(255), nullable=False)
    rate_limit: Mapped[float | None] = Column(Float)
    daily_quota: Mapped[int | None] = Column(Integer)
    expiry_notices: Mapped[bool] = Column(Boolean, nullable=False, server_default=text("true"))

    __table_args__ = (
        CheckConstraint("status IN ('active', 'revoked')", name="token_status"),
        CheckConstraint("owner_kind IN ('user', 'organization')", name="token_owner_kind"),
        CheckConstraint(
            "(rate_limit IS NULL OR rate_limit > 0) AND (daily_quota IS NULL OR daily_quota > 0)", name="token_limits"
        ),
        Index("token_owner_status", "owner_id", "status"),
        Index("token_current_jti", "current_jti", unique=True),
    )


class Revocation(Base):
    """A revoked jti and/or token id. Inserting one notifies every listening validator."""

    __tablename__ = "revocation"

    id: Mapped[int] = Column(BigInteger, primary_key=True, autoincrement=True)
    jti: Mapped[str | None] = Column(String(255))
    token_id: Mapped[str | None] = Column(String(64))
    revoked_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    effective_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False)
    reason: Mapped[str | None] = Column(Text)
    actor: Mapped[str | None] = Column(String(255))

    __table_args__ = (
        CheckConstraint("jti IS NOT NULL OR token_id IS NOT NULL", name="revocation_target"),
        Index("revocation_jti", "jti"),
        Index("revocation_token_id", "token_id"),
        Index("revocation_expires_at", "expires_at"),
    )


class AuditEvent(Base):
    """Who did what to which token, when, and from where."""

    __tablename__ = "audit_event"

    id: Mapped[int] = Column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    actor_id: Mapped[str | None] = Column(String(128))
    actor_name: Mapped[str | None] = Column(String(255))
    action: Mapped[str] = Column(String(64), nullable=False)
    token_id: Mapped[str | None] = Column(String(64))
    owner_id: Mapped[str | None] = Column(String(128))
    owner_kind: Mapped[str | None] = Column(String(16))
    source: Mapped[str | None] = Column(String(255))
    detail: Mapped[dict[str, Any]] = Column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))

    __table_args__ = (Index("audit_event_token", "token_id"), Index("audit_event_at", "at"))


class SigningKey(Base):
    """A local-issuer key pair. The private key is PKCS#8, encrypted with the key passphrase."""

    __tablename__ = "signing_key"

    kid: Mapped[str] = Column(String(64), primary_key=True)
    algorithm: Mapped[str] = Column(String(16), nullable=False)
    public_jwk: Mapped[dict[str, Any]] = Column(JSONB, nullable=False)
    private_key: Mapped[bytes] = Column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    retired_at: Mapped[datetime | None] = Column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = Column(DateTime(timezone=True))


class UsageBatch(Base):
    """A batch of usage counters a validator has applied (validator/usage.py): a retry is a no-op."""

    __tablename__ = "usage_batch"

    id: Mapped[str] = Column(UUID(as_uuid=False), primary_key=True)
    applied_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (Index("usage_batch_applied_at", "applied_at"),)


class UsageDaily(Base):
    """Requests a token was let through on one UTC day, added by the validators' usage batches."""

    __tablename__ = "usage_daily"

    token_id: Mapped[str] = Column(String(64), ForeignKey("token.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = Column(Date, primary_key=True)
    count: Mapped[int] = Column(BigInteger, nullable=False)

    __table_args__ = (Index("usage_daily_day", "day"),)


class ExpiryNotice(Base):
    """An expiry warning claimed for (token, expiry, lead time, recipient): each is mailed once.

    The expiry is part of the key, so a renewed token is warned again before its new expiry.
    """

    __tablename__ = "expiry_notice"

    token_id: Mapped[str] = Column(String(64), ForeignKey("token.id", ondelete="CASCADE"), primary_key=True)
    expires_at: Mapped[datetime] = Column(DateTime(timezone=True), primary_key=True)
    lead_seconds: Mapped[int] = Column(Integer, primary_key=True)
    recipient_id: Mapped[str] = Column(String(128), primary_key=True)
    sent_at: Mapped[datetime] = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
