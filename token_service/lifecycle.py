"""Create, renew, revoke, list, show and prune ML API tokens.

Every change is one database transaction that also writes its audit event. The
token string is returned once, in `IssuedToken.secret`, and never stored. Only a
token's owner or an admin may see or touch it; anybody else is told it was not found.

An owner is a user or an organization (`Owner.kind`). Nobody logs in as an organization:
its tokens are managed by people the caller (the CKAN plugin, after CKAN's authorization)
names as acting for it (`Actor.acting_for`); the audit log records both, who did it
(actor) and whose token it was (owner).
"""

from __future__ import annotations

import logging
import unicodedata
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select, text, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select  # (SQLAlchemy 1.4, in CKAN 2.11, has them here only)

from .config import Settings
from .errors import (
    AlreadyRevoked,
    InvalidInput,
    NotAuthorized,
    RateLimited,
    RolesNotAllowed,
    StoreUnavailable,
    TokenNotActive,
    TokenNotFound,
    TooManyTokens,
    TTLTooLong,
)
from .issuers import OWNER_KINDS, USER, Grant, Issuer, Minted, Owner
from .store import AuditEvent, Revocation, Store, Token, UsageBatch, UsageDaily
from .token_format import with_prefix

log = logging.getLogger(__name__)

MIN_TTL = timedelta(minutes=1)
MAX_NAME = 200
MAX_REASON = 500
MAX_OWNER_ID = 128
MAX_OWNER_NAME = 255
USAGE_BATCH_RETENTION = timedelta(days=7)  # how long an applied usage batch id is remembered
LEAKED = "reported leaked"
DEFAULT_EXPIRY_NOTICES = (timedelta(days=7), timedelta(days=1))


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Actor:
    """Who asks: a user (owner or admin), an operator at the CLI, or a system job.

    `acting_for` names the one other owner (an organization) whose tokens this person may
    manage in this call, as the caller decided (an organization's admin, in CKAN): the
    actor then sees and touches that owner's tokens only, an administrator's too.
    """

    id: str
    name: str
    is_admin: bool = False
    source: str | None = None
    acting_for: Owner | None = None

    def may_manage(self, kind: str, owner_id: str) -> bool:
        """Whether this actor may see and change the tokens of owner (`kind`, `owner_id`)."""
        if self.acting_for is not None:
            return (kind, owner_id) == (self.acting_for.kind, self.acting_for.id)
        return self.is_admin or (kind, owner_id) == (USER, self.id)

    @classmethod
    def operator(cls, source: str = "cli") -> Actor:
        return cls(id="operator", name="operator", is_admin=True, source=source)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    owner_id: str
    owner_name: str
    owner_kind: str
    subject: str
    kind: str
    issuer: str
    client_id: str | None
    roles: tuple[str, ...]
    created_at: datetime
    issued_at: datetime
    expires_at: datetime
    renew_count: int
    last_used_at: datetime | None
    use_count: int
    status: str  # active | expired | revoked
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    rate_limit: float | None
    daily_quota: int | None
    expiry_notices: bool
    previous_valid_until: datetime | None = None
    """After a rotation (or a renewal with a grace period): until when the previous token string still works."""

    @classmethod
    def of(cls, row: Token, now: datetime, previous_valid_until: datetime | None = None) -> TokenInfo:
        status = "expired" if row.status == "active" and row.expires_at <= now else row.status
        return cls(
            id=row.id,
            name=row.name,
            owner_id=row.owner_id,
            owner_name=row.owner_name,
            owner_kind=row.owner_kind,
            subject=row.subject,
            kind=row.kind,
            issuer=row.issuer,
            client_id=row.client_id,
            roles=tuple(row.roles),
            created_at=row.created_at,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            renew_count=row.renew_count,
            last_used_at=row.last_used_at,
            use_count=row.use_count,
            status=status,
            revoked_at=row.revoked_at,
            revoked_by=row.revoked_by,
            revoke_reason=row.revoke_reason,
            rate_limit=row.rate_limit,
            daily_quota=row.daily_quota,
            expiry_notices=row.expiry_notices,
            previous_valid_until=previous_valid_until if status == "active" else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v)
            for k, v in self.__dict__.items()
        }


@dataclass(frozen=True)
class IssuedToken:
    """A token just created or renewed. `secret` is shown to the user once."""

    info: TokenInfo
    secret: str


@dataclass(frozen=True)
class LeakNotice:
    """A token string reported found (`Lifecycle.revoke_reported`), for a mail to its owner."""

    token_id: str
    token_name: str
    owner_id: str
    owner_name: str
    owner_kind: str
    reported_at: datetime
    url: str | None
    source: str | None
    found_by: str


@dataclass(frozen=True)
class PruneReport:
    revocations: int
    tokens: int
    audit_events: int
    issuer_items: int
    usage_days: int


@dataclass(frozen=True)
class TokenUsage:
    """A token's requests per UTC day, oldest first, every day of the period (days without use count 0)."""

    token: TokenInfo
    daily: tuple[tuple[date, int], ...]

    @property
    def today(self) -> int:
        return self.daily[-1][1] if self.daily else 0

    def as_dict(self) -> dict[str, Any]:
        t = self.token
        return {
            "id": t.id,
            "name": t.name,
            "owner_id": t.owner_id,
            "owner_name": t.owner_name,
            "status": t.status,
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
            "use_count": t.use_count,
            "today": self.today,
            "daily": [{"date": day.isoformat(), "count": count} for day, count in self.daily],
        }


@dataclass(frozen=True)
class DueNotice:
    """An expiry warning to send: the most urgent lead time the token has crossed."""

    token: TokenInfo
    lead: timedelta


class Lifecycle:
    def __init__(
        self, settings: Settings, store: Store, issuer: Issuer, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.settings = settings
        self.store = store
        self.issuer = issuer
        self.clock = clock

    # -- queries -------------------------------------------------------------------

    def grantable_roles(self, owner: Owner) -> list[str]:
        return sorted(self.issuer.grantable_roles(owner))

    def show(self, token_id: str, actor: Actor) -> TokenInfo:
        now = self.clock()
        with self.store.transaction() as session:
            row = self._visible(session, token_id, actor)
            return TokenInfo.of(row, now, self._graces(session, [row.id], now).get(row.id))

    def list(
        self,
        actor: Actor,
        owner_id: str | None = None,
        include_inactive: bool = True,
        owner_kind: str = USER,
        idle: timedelta | None = None,
    ) -> list[TokenInfo]:
        """The actor's own tokens (or those of the owner it acts for); an admin may name any
        owner, or None for everybody's.

        With `idle`: only active tokens neither used nor created within it, longest idle first.
        """
        if owner_id is None and not actor.is_admin:
            owner_kind, owner_id = (
                (actor.acting_for.kind, actor.acting_for.id) if actor.acting_for else (USER, actor.id)
            )
        if owner_id is not None:
            owner_id, owner_kind = _clean_owner_id(owner_id), _clean_owner_kind(owner_kind)
            if not actor.may_manage(owner_kind, owner_id):
                raise NotAuthorized("Only an administrator may list another owner's tokens.")
        now = self.clock()
        query = select(Token).order_by(Token.created_at.desc(), Token.id)
        if owner_id is not None:
            query = query.where(Token.owner_kind == owner_kind, Token.owner_id == owner_id)
        if not include_inactive or idle is not None:
            query = query.where(Token.status == "active", Token.expires_at > now)
        if idle is not None:
            last_seen = func.coalesce(Token.last_used_at, Token.created_at)
            query = query.where(last_seen < now - idle).order_by(None).order_by(last_seen, Token.id)
        with self.store.transaction() as session:
            rows = session.scalars(query).all()
            graces = self._graces(session, [row.id for row in rows], now)
            return [TokenInfo.of(row, now, graces.get(row.id)) for row in rows]

    def active_reaching(self, model_ids: Iterable[str]) -> list[TokenInfo]:
        """The active tokens with a role `model:<id>:<operation>` for one of `model_ids`.

        One index lookup (migration 0004m), however many tokens there are: what a catalogue
        reads when a model's access changes, instead of every token.
        """
        wanted = sorted({str(m) for m in model_ids})
        if not wanted:
            return []
        now = self.clock()
        query = _active_tokens(
            now, func.mltokens.role_models(Token.roles).op("&&")(cast(wanted, ARRAY(Text)))
        ).order_by(Token.owner_id, Token.id)
        with self.store.transaction() as session:
            return [TokenInfo.of(row, now) for row in session.scalars(query)]

    def usage(
        self,
        actor: Actor,
        token_id: str | None = None,
        owner_id: str | None = None,
        days: int = 30,
        owner_kind: str = USER,
    ) -> list[TokenUsage]:
        """Daily use of one token, or of the tokens `list` would show, over the last `days` UTC days (today last)."""
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= self.usage_days():
            raise InvalidInput(f"The period must be between 1 and {self.usage_days()} days.", field="days")
        tokens = (
            [self.show(token_id, actor)] if token_id is not None else self.list(actor, owner_id, owner_kind=owner_kind)
        )
        today = self.clock().astimezone(UTC).date()
        first = today - timedelta(days=days - 1)
        counts: dict[str, dict[date, int]] = {t.id: {} for t in tokens}
        if tokens:
            query = select(UsageDaily.token_id, UsageDaily.day, UsageDaily.count).where(
                UsageDaily.token_id.in_(list(counts)), UsageDaily.day >= first, UsageDaily.day <= today
            )
            with self.store.transaction() as session:
                for tid, day, count in session.execute(query):
                    counts[tid][day] = count
        period = [first + timedelta(days=i) for i in range(days)]
        return [TokenUsage(t, tuple((day, counts[t.id].get(day, 0)) for day in period)) for t in tokens]

    def usage_days(self) -> int:
        """The longest period daily usage is kept for, in days."""
        return int(self.settings.usage_retention / timedelta(days=1))

    def due_notices(self, leads: Iterable[timedelta]) -> list[DueNotice]:
        """Active tokens with expiry warnings on that have crossed one of the lead times.

        Per token, only the most urgent lead crossed (a run after an outage sends the 1-day
        warning, not the 7-day one too), and only leads shorter than the token's lifetime
        (a 3-day token is not warned 7 days ahead the moment it is made).
        """
        leads = sorted(set(leads))
        if not leads:
            return []
        now = self.clock()
        query = _active_tokens(now, Token.expiry_notices.is_(True), Token.expires_at <= now + leads[-1]).order_by(
            Token.expires_at, Token.id
        )
        due = []
        with self.store.transaction() as session:
            for row in session.scalars(query):
                left, lifetime = row.expires_at - now, row.expires_at - row.issued_at
                crossed = [lead for lead in leads if left <= lead < lifetime]
                if crossed:
                    due.append(DueNotice(TokenInfo.of(row, now), crossed[0]))
        return due

    @contextmanager
    def claim_notice(self, notice: DueNotice, recipient_id: str) -> Iterator[bool]:
        """Claim the warning for one recipient: yields True when this caller is to send it.

        The claim is a row inserted in a transaction held open while the caller sends: when the
        block raises (the mail was not sent) the claim goes with the rollback and a later run
        retries; another run claiming the same row waits for this one's outcome, then finds it
        taken. Only a crash between the mail server's acceptance and the commit can send twice.
        The token must still be active, with warnings on and the same expiry (not renewed since).
        """
        token = notice.token
        with self.store.transaction() as session:
            claimed = session.execute(
                text(
                    "INSERT INTO mltokens.expiry_notice (token_id, expires_at, lead_seconds, recipient_id) "
                    "SELECT id, expires_at, :lead, :recipient FROM mltokens.token "
                    "WHERE id = :id AND expires_at = :expires AND status = 'active' AND expiry_notices "
                    "ON CONFLICT DO NOTHING RETURNING token_id"
                ),
                {
                    "id": token.id,
                    "expires": token.expires_at,
                    "lead": int(notice.lead.total_seconds()),
                    "recipient": recipient_id,
                },
            ).first()
            if claimed is not None:
                self._system_event(
                    session,
                    "expiry_notice",
                    (token.id, token.owner_id, token.owner_kind),
                    {"lead": int(notice.lead.total_seconds()), "recipient": recipient_id},
                    source="notify",
                )
            yield claimed is not None

    # -- changes -------------------------------------------------------------------

    def create(
        self,
        owner: Owner,
        name: str,
        roles: Iterable[str],
        ttl: timedelta | datetime | None = None,
        actor: Actor | None = None,
        kind: str = "access_token",
        rate_limit: float | None = None,
        daily_quota: int | None = None,
        grantable: Collection[str] | None = None,
    ) -> IssuedToken:
        """A new token; `kind` is `access_token` or, where the issuer offers it, `client_credentials`.

        `ttl` is its lifetime, or the (timezone-aware) moment it expires; default: the `default_ttl` setting.
        `rate_limit` (requests per second) and `daily_quota` (requests per day) are the
        token's own limits, within the operator's bounds; the validator enforces them on
        top of the route limits. `grantable`, when given, is the set of roles the owner may
        grant, as the caller decided it (e.g. CKAN's catalogue); else the issuer's.
        """
        owner_kind = _clean_owner_kind(owner.kind)
        actor = actor or Actor(owner.id, owner.name)
        if not actor.may_manage(owner_kind, owner.id):
            raise NotAuthorized("Only an administrator may create tokens for another owner.")
        owner = Owner(
            _clean_owner_id(owner.id), check_text(owner.name, "owner_name", "owner name", MAX_OWNER_NAME), owner_kind
        )
        name = _clean_name(name)
        if not isinstance(kind, str) or kind not in self.issuer.token_kinds:
            raise InvalidInput(
                f"This site offers these token kinds: {', '.join(sorted(self.issuer.token_kinds))}.", field="kind"
            )
        now = _second(self.clock())
        ttl = self._check_ttl(ttl, now)
        rate_limit, daily_quota = self._check_limits(rate_limit, daily_quota)
        granted = self._check_roles(owner, roles, grantable)
        token_id = str(uuid.uuid4())
        grant = Grant(
            token_id=token_id,
            name=name,
            owner=owner,
            roles=granted,
            issued_at=now,
            expires_at=now + ttl,
            kind=kind,
            rate_limit=rate_limit,
            daily_quota=daily_quota,
        )
        minted: Minted | None = None
        try:
            with self.store.transaction() as session:
                # One creation at a time per owner, so the active-token limit holds under races.
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": owner.id})
                self._check_room(session, owner, name, now)
                minted = self.issuer.issue(grant)
                row = Token(
                    id=token_id,
                    owner_id=owner.id,
                    owner_name=owner.name,
                    owner_kind=owner.kind,
                    subject=minted.subject,
                    name=name,
                    kind=kind,
                    issuer=self.issuer.kind,
                    client_id=minted.client_id,
                    roles=list(granted),
                    ttl_seconds=int(ttl.total_seconds()),
                    created_at=now,
                    issued_at=minted.issued_at,
                    expires_at=minted.expires_at,
                    current_jti=minted.jti,
                    rate_limit=rate_limit,
                    daily_quota=daily_quota,
                )
                session.add(row)
                self._audit(
                    session,
                    actor,
                    "create",
                    row,
                    {"name": name, "roles": list(granted), "ttl": row.ttl_seconds, "kind": kind, **grant.limits()},
                )
                session.flush()
                info = TokenInfo.of(row, now)
        except StoreUnavailable:
            if minted is not None:
                self._retire_quietly(token_id, minted.client_id)
            raise
        return IssuedToken(info, self._handed_out(kind, minted.secret))

    def renew(
        self,
        token_id: str,
        actor: Actor,
        ttl: timedelta | datetime | None = None,
        grace: timedelta | None = None,
        grantable: Callable[[Owner], Collection[str]] | None = None,
    ) -> IssuedToken:
        """A new credential (new jti and expiry) for the same token id; the old jti is revoked
        after `grace` (default: the `renew_grace` setting).

        `grantable`, when given, says which roles the token's owner may grant now: a token
        holding any other role is not renewed (the owner lost access since its creation).
        """
        grace = self.settings.renew_grace if grace is None else grace
        return self._renew(token_id, actor, ttl, grace, "renew", grantable)

    def rotate(
        self,
        token_id: str,
        actor: Actor,
        ttl: timedelta | datetime | None = None,
        grantable: Callable[[Owner], Collection[str]] | None = None,
    ) -> IssuedToken:
        """A renewal whose old token keeps working for the `rotate_grace` setting: for clients that
        pick up a new token on their own schedule (a Kubernetes Secret, a configuration reload)."""
        return self._renew(token_id, actor, ttl, self.settings.rotate_grace, "rotate", grantable)

    def _renew(
        self,
        token_id: str,
        actor: Actor,
        ttl: timedelta | datetime | None,
        grace: timedelta,
        action: str,
        grantable: Callable[[Owner], Collection[str]] | None,
    ) -> IssuedToken:
        now = _second(self.clock())
        with self.store.transaction() as session:
            row = self._visible(session, token_id, actor, for_update=True)
            if row.status != "active":
                raise TokenNotActive("A revoked token cannot be renewed; create a new one.")
            if grantable is not None:
                lost = sorted(set(row.roles) - set(grantable(Owner(row.owner_id, row.owner_name, row.owner_kind))))
                if lost:
                    raise RolesNotAllowed(f"This token's owner may no longer grant: {', '.join(lost)}.", field="id")
            ttl = self._check_ttl(timedelta(seconds=row.ttl_seconds) if ttl is None else ttl, now)
            owner = Owner(row.owner_id, row.owner_name, row.owner_kind)
            grant = Grant(
                token_id=row.id,
                name=row.name,
                owner=owner,
                roles=tuple(row.roles),
                issued_at=now,
                expires_at=now + ttl,
                client_id=row.client_id,
                kind=row.kind,
                rate_limit=row.rate_limit,
                daily_quota=row.daily_quota,
            )
            minted = self.issuer.reissue(grant)
            # The old credential: the one JWT minted (access_token), or every JWT fetched with the
            # old secret (client_credentials: they name it in the credential claim). None of them
            # is valid past the old expiry (the `exp` of the one, the expiry claim of the others).
            session.add(
                Revocation(
                    jti=row.current_jti,
                    revoked_at=now,
                    effective_at=now + grace,
                    expires_at=row.expires_at + self.settings.leeway,
                    reason="renewed",
                    actor=actor.name,
                )
            )
            old_jti = row.current_jti
            row.current_jti = minted.jti
            row.issued_at = minted.issued_at
            row.expires_at = minted.expires_at
            row.ttl_seconds = int(ttl.total_seconds())
            row.renew_count += 1
            self._audit(
                session,
                actor,
                action,
                row,
                {"old_jti": old_jti, "ttl": row.ttl_seconds, "grace": int(grace.total_seconds())},
            )
            session.flush()
            info = TokenInfo.of(row, now, self._graces(session, [row.id], now).get(row.id))
        return IssuedToken(info, self._handed_out(row.kind, minted.secret))

    def revoke(self, token_id: str, actor: Actor, reason: str | None = None) -> TokenInfo:
        """Status change, revocation row and audit event commit together, or not at all."""
        reason = _clean_reason(reason)
        now = self.clock()
        with self.store.transaction() as session:
            row = self._visible(session, token_id, actor, for_update=True)
            if row.status == "revoked":
                raise AlreadyRevoked("This token is already revoked.")
            self._revoke_row(session, row, actor, reason, now)
            info = TokenInfo.of(row, now)
        self._retire_quietly(row.id, row.client_id)
        return info

    def revoke_reported(self, token_id: Any, jti: Any, found: dict[str, str], actor: Actor) -> bool:
        """Revoke the token string that was reported found (a leak): True if it was still good.

        `token_id` and `jti` come from the verified token (the caller checked its signature;
        a client-credentials JWT names its credential as the jti here). The current token
        string revokes the whole token, as a revoke does; a previous one still in a rotation's
        grace period is revoked alone, at once, and the current one keeps working. Either way
        the audit log keeps where it was found (`found`) in a `leak_reported` event, which
        `leak_notices` mails to the owner later. Issuer-side tidying (disabling a Keycloak
        client) is left to `mltokens sync`: no call to another service in the reporter's request.
        """
        if not (isinstance(token_id, str) and _is_uuid(token_id) and isinstance(jti, str)):
            return False
        now = self.clock()
        with self.store.transaction() as session:
            row = session.scalars(select(Token).where(Token.id == token_id).with_for_update()).first()
            if row is None or row.status != "active":
                return False
            if jti == row.current_jti:
                self._revoke_row(session, row, actor, LEAKED, now)
                which = "current"
            else:
                grace = session.scalars(
                    select(Revocation).where(Revocation.jti == jti).order_by(Revocation.effective_at).limit(1)
                ).first()
                if grace is None or grace.effective_at <= now or grace.token_id is not None:
                    return False
                session.add(
                    Revocation(
                        jti=jti,
                        revoked_at=now,
                        effective_at=now,
                        expires_at=grace.expires_at,
                        reason=LEAKED,
                        actor=actor.name,
                    )
                )
                which = "previous"
            self._audit(session, actor, "leak_reported", row, {**found, "token_string": which})
        return True

    def leak_notices(self, send: Callable[[LeakNotice], None], limit: int = 1000) -> int:
        """Hand each `leak_reported` event not yet told to its owner to `send`, once; the count sent.

        One event per transaction, locked with SKIP LOCKED: runners on two replicas at once
        each take different events, and an event is marked (`leak_notified`) in the
        transaction that sent it. A `send` that raises leaves its event for the next run.
        """
        done = AuditEvent.__table__.alias("done")
        failed: list[int] = []
        sent = 0
        while sent + len(failed) < limit:
            with self.store.transaction() as session:
                event = session.scalars(
                    select(AuditEvent)
                    .where(
                        AuditEvent.action == "leak_reported",
                        AuditEvent.id.not_in(failed),
                        ~select(done.c.id)
                        .where(
                            done.c.action == "leak_notified",
                            done.c.detail["report"].astext == cast(AuditEvent.id, Text),
                        )
                        .exists(),
                    )
                    .order_by(AuditEvent.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if event is None:
                    return sent
                token = session.get(Token, event.token_id)
                notice = LeakNotice(
                    token_id=event.token_id or "",
                    token_name=token.name if token else "",
                    owner_id=event.owner_id or "",
                    owner_name=token.owner_name if token else "",
                    owner_kind=event.owner_kind or USER,
                    reported_at=event.at,
                    url=event.detail.get("url"),
                    source=event.detail.get("source"),
                    found_by=event.detail.get("reporter", ""),
                )
                try:
                    send(notice)
                except Exception:
                    log.exception("could not send the leak notice of audit event %s; the next run retries", event.id)
                    failed.append(event.id)
                    continue
                self._system_event(
                    session,
                    "leak_notified",
                    (event.token_id, event.owner_id, event.owner_kind),
                    {"report": str(event.id)},
                )
                sent += 1
        return sent

    def revoke_all(
        self,
        owner_id: str,
        actor: Actor,
        reason: str | None = None,
        owner_kind: str = USER,
        *,
        include_expired: bool = True,
        ids: Collection[str] | None = None,
    ) -> list[TokenInfo]:
        """Revoke every active token of an owner (or only the unexpired ones, or only those of `ids`:
        another owner's id is skipped like an unknown one), all in one transaction."""
        owner_id, owner_kind = _clean_owner_id(owner_id), _clean_owner_kind(owner_kind)
        if not actor.may_manage(owner_kind, owner_id):
            raise NotAuthorized("Only an administrator may revoke another owner's tokens.")
        reason = _clean_reason(reason)
        now = self.clock()
        return self._revoke_where(
            (
                Token.owner_kind == owner_kind,
                Token.owner_id == owner_id,
                true() if include_expired else Token.expires_at > now,
                true() if ids is None else Token.id.in_(sorted(str(i) for i in ids if _is_uuid(i))),
            ),
            actor,
            lambda row: reason,
            now,
        )

    def revoke_each(self, reasons: Mapping[str, str | None], actor: Actor) -> list[TokenInfo]:
        """Revoke many tokens, each with its own reason, in one transaction; those revoked or gone
        meanwhile are skipped. What a catalogue's access change uses: one commit for a model's
        1,000 tokens instead of 1,000 (docs/catalogue-access.md, "Cost model")."""
        cleaned = {str(token_id): _clean_reason(reason) for token_id, reason in reasons.items() if _is_uuid(token_id)}
        if not cleaned:
            return []
        return self._revoke_where((Token.id.in_(sorted(cleaned)),), actor, lambda row: cleaned[row.id], self.clock())

    def _revoke_where(
        self,
        where: Iterable[ColumnElement[bool]],
        actor: Actor,
        reason_of: Callable[[Token], str | None],
        now: datetime,
    ) -> list[TokenInfo]:
        """Revoke the active tokens matching `where` in one transaction: all of them, or (when the
        actor may not manage one) none."""
        with self.store.transaction() as session:
            rows = session.scalars(
                # Rows locked in id order, like the validators' usage flushes: no deadlock between them.
                select(Token).where(Token.status == "active", *where).order_by(Token.id).with_for_update()
            ).all()
            for row in rows:
                if not actor.may_manage(row.owner_kind, row.owner_id):
                    raise NotAuthorized("Only an administrator may revoke another owner's tokens.")
                self._revoke_row(session, row, actor, reason_of(row), now)
            infos = [TokenInfo.of(row, now) for row in rows]
        for row in rows:
            self._retire_quietly(row.id, row.client_id)
        return infos

    def set_expiry_notices(self, token_id: str, actor: Actor, enabled: bool) -> TokenInfo:
        """Turn a token's expiry warnings (e-mail before it expires) on or off."""
        if not isinstance(enabled, bool):
            raise InvalidInput("Give true or false.", field="expiry_notices")
        now = self.clock()
        with self.store.transaction() as session:
            row = self._visible(session, token_id, actor, for_update=True)
            if row.expiry_notices != enabled:
                row.expiry_notices = enabled
                self._audit(session, actor, "expiry_notices", row, {"enabled": enabled})
            session.flush()
            return TokenInfo.of(row, now)

    def prune(self) -> PruneReport:
        """Drop expired revocations, tokens past retention, old audit events and daily usage past retention."""
        now = self.clock()
        settings = self.settings
        with self.store.transaction() as session:
            revocations = session.execute(delete(Revocation).where(Revocation.expires_at < now)).rowcount
            tokens = session.execute(
                delete(Token).where(
                    or_(
                        Token.expires_at < now - settings.retention,
                        (Token.status == "revoked") & (Token.revoked_at < now - settings.retention),
                    )
                )
            ).rowcount
            audits = session.execute(delete(AuditEvent).where(AuditEvent.at < now - settings.audit_retention)).rowcount
            # A validator retries an unconfirmed batch until PostgreSQL answers: minutes, not a week.
            session.execute(delete(UsageBatch).where(UsageBatch.applied_at < now - USAGE_BATCH_RETENTION))
            oldest_day = (now - settings.usage_retention).astimezone(UTC).date()
            days = session.execute(delete(UsageDaily).where(UsageDaily.day < oldest_day)).rowcount
            report = PruneReport(revocations, tokens, audits, self.issuer.prune(now), days)
            session.add(
                AuditEvent(action="prune", actor_id="system", actor_name="system", at=now, detail=report.__dict__)
            )
        return report

    # -- helpers -------------------------------------------------------------------

    def _handed_out(self, kind: str, secret: str) -> str:
        """A token as the user gets it: with the recognisable prefix, except a client secret
        (Keycloak makes it, and the JWTs fetched with it come from Keycloak: docs/security.md)."""
        return secret if kind == "client_credentials" else with_prefix(secret, self.settings.token_prefix)

    def _graces(self, session: Session, token_ids: list[str], now: datetime) -> dict[str, datetime]:
        """For each token renewed or rotated with a grace period still running: when the previous
        token string stops working (its revocation takes effect, or it expires, whichever is first).

        A renewal's audit event names the old jti; its revocations (the renewal's, and an earlier
        one if the old token was reported leaked) say when it stops.
        """
        if not token_ids:
            return {}
        old_jti = AuditEvent.detail["old_jti"].astext
        rows = session.execute(
            select(AuditEvent.token_id, func.min(Revocation.effective_at), func.min(Revocation.expires_at))
            .join(Revocation, Revocation.jti == old_jti)
            .where(AuditEvent.token_id.in_(token_ids), AuditEvent.action.in_(("renew", "rotate")))
            .group_by(AuditEvent.token_id, old_jti)
        )
        graces: dict[str, datetime] = {}
        for token_id, effective_at, expires_at in rows:
            until = min(effective_at, expires_at - self.settings.leeway)
            if until > now:
                graces[token_id] = max(until, graces.get(token_id, until))
        return graces

    def _visible(self, session: Session, token_id: str, actor: Actor, for_update: bool = False) -> Token:
        query = select(Token).where(Token.id == str(token_id))
        if for_update:
            query = query.with_for_update()
        row = session.scalars(query).first() if _is_uuid(token_id) else None
        if row is None or not actor.may_manage(row.owner_kind, row.owner_id):
            raise TokenNotFound(str(token_id))
        return row

    def _revoke_row(self, session: Session, row: Token, actor: Actor, reason: str | None, now: datetime) -> None:
        row.status = "revoked"
        row.revoked_at = now
        row.revoked_by = actor.name
        row.revoke_reason = reason
        # Kept until the last JWT of the token has expired: every one is refused past the token's
        # expiry (+ leeway), by its `exp` or, for client-credentials JWTs, by the expiry claim.
        session.add(
            Revocation(
                jti=row.current_jti,
                token_id=row.id,
                revoked_at=now,
                effective_at=now,
                expires_at=row.expires_at + self.settings.leeway,
                reason=reason,
                actor=actor.name,
            )
        )
        self._audit(session, actor, "revoke", row, {"reason": reason})

    def _check_ttl(self, ttl: timedelta | datetime | None, now: datetime) -> timedelta:
        """The lifetime from `now`; `ttl` may be the moment it ends, measured on the same clock
        as the token's issue time so that a date gives an expiry of exactly that date."""
        ttl = self.settings.default_ttl if ttl is None else ttl
        if isinstance(ttl, datetime):
            if ttl.utcoffset() is None:
                raise InvalidInput("Give the expiry moment with its time zone (e.g. UTC).", field="ttl")
            ttl = ttl - now
        if ttl < MIN_TTL:
            raise InvalidInput("The lifetime must be at least one minute.", field="ttl")
        if ttl > self.settings.max_ttl:
            days = self.settings.max_ttl.total_seconds() / 86400
            raise TTLTooLong(f"The lifetime may be at most {days:g} days.", field="ttl")
        return ttl

    def _check_limits(self, rate_limit: float | None, daily_quota: int | None) -> tuple[float | None, int | None]:
        """Both limits checked; when both are wrong, one error names both."""
        settings = self.settings
        checks = {
            "rate_limit": lambda: _bounded(
                rate_limit,
                float,
                "rate_limit",
                "The rate limit must be a number of requests per second.",
                settings.max_token_rate_limit,
                f"The rate limit must be above 0 and at most {settings.max_token_rate_limit} requests per second.",
            ),
            "daily_quota": lambda: _bounded(
                daily_quota,
                _whole,
                "daily_quota",
                "The daily quota must be a whole number of requests.",
                settings.max_token_daily_quota,
                f"The daily quota must be between 1 and {settings.max_token_daily_quota} requests.",
            ),
        }
        values, wrong = {}, []
        for field, check in checks.items():
            try:
                values[field] = check()
            except InvalidInput as exc:
                wrong.append(exc)
        if wrong:
            raise InvalidInput(wrong[0].message, field=wrong[0].field, also={e.field: e.message for e in wrong[1:]})
        return values["rate_limit"], values["daily_quota"]

    def _check_roles(
        self, owner: Owner, roles: Iterable[str], grantable: Collection[str] | None = None
    ) -> tuple[str, ...]:
        if isinstance(roles, str):
            roles = [roles]
        wanted = sorted({str(r).strip() for r in roles if str(r).strip()})
        if not wanted:
            raise InvalidInput("Choose at least one role.", field="roles")
        allowed = self.issuer.grantable_roles(owner) if grantable is None else set(grantable)
        refused = sorted(set(wanted) - allowed)
        if refused:
            raise RolesNotAllowed(f"You may not grant: {', '.join(refused)}.", field="roles")
        return tuple(wanted)

    def _check_room(self, session: Session, owner: Owner, name: str, now: datetime) -> None:
        recent = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.owner_kind == owner.kind,
                AuditEvent.owner_id == owner.id,
                AuditEvent.action == "create",
                AuditEvent.at > now - timedelta(hours=1),
            )
        )
        if recent >= self.settings.max_creations_per_hour:
            raise RateLimited("Too many tokens created in the last hour; try again later.", field="name")
        active = select(Token).where(
            Token.owner_kind == owner.kind, Token.owner_id == owner.id, Token.status == "active", Token.expires_at > now
        )
        count = session.scalar(select(func.count()).select_from(active.subquery()))
        who = "You already have" if owner.kind == USER else "This organization already has"
        if count >= self.settings.max_tokens_per_owner:
            raise TooManyTokens(f"{who} {count} active tokens, the most allowed; revoke one first.", field="name")
        if session.scalar(select(func.count()).select_from(active.where(Token.name == name).subquery())):
            raise InvalidInput(f"{who} an active token with this name.", field="name")

    def _system_event(
        self,
        session: Session,
        action: str,
        token: tuple[str | None, str | None, str | None],
        detail: dict[str, Any],
        source: str | None = None,
    ) -> None:
        """An audit event of the service's own jobs (notices sent), about `token` = (id, owner id, owner kind)."""
        token_id, owner_id, owner_kind = token
        session.add(
            AuditEvent(
                at=self.clock(),
                actor_id="system",
                actor_name="system",
                action=action,
                token_id=token_id,
                owner_id=owner_id,
                owner_kind=owner_kind,
                source=source,
                detail=detail,
            )
        )

    def _audit(self, session: Session, actor: Actor, action: str, row: Token, detail: dict[str, Any]) -> None:
        session.add(
            AuditEvent(
                at=self.clock(),
                actor_id=actor.id,
                actor_name=actor.name,
                action=action,
                token_id=row.id,
                owner_id=row.owner_id,
                owner_kind=row.owner_kind,
                source=actor.source,
                detail=detail,
            )
        )

    def _retire_quietly(self, token_id: str, client_id: str | None) -> None:
        """Issuer-side tidying after the store is settled; `mltokens sync` retries failures."""
        try:
            self.issuer.retire(token_id, client_id)
        except Exception:
            log.exception("issuer could not retire token %s (client %s); sync will retry", token_id, client_id)


def _active_tokens(now: datetime, *where: ColumnElement[bool]) -> Select[tuple[Token]]:
    """The tokens active and unexpired at `now` that also meet `where`."""
    return select(Token).where(Token.status == "active", Token.expires_at > now, *where)


def _whole(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _bounded(
    value: Any, convert: Callable[[Any], Any], field: str, not_a_number: str, upper: int, out_of_range: str
) -> Any:
    """A per-token limit: absent, or a number above 0 and at most the operator's bound."""
    if value is None:
        return None
    if isinstance(value, bool):  # JSON true/false is not a number of requests
        raise InvalidInput(not_a_number, field=field)
    try:
        number = convert(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(not_a_number, field=field) from None
    if not 0 < number <= upper:
        raise InvalidInput(out_of_range, field=field)
    return number


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def check_text(value: Any, field: str, label: str, limit: int) -> str:
    """The one check of every text the service stores or looks up: a non-empty string of at
    most `limit` characters without control or format characters (NUL, which PostgreSQL
    refuses; bidi overrides such as RLO; zero-width characters)."""
    if not isinstance(value, str):
        raise InvalidInput(f"The {label} must be text.", field=field)
    if not value:
        raise InvalidInput(f"The {label} may not be empty.", field=field)
    if len(value) > limit:
        raise InvalidInput(f"The {label} may be at most {limit} characters.", field=field)
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise InvalidInput(f"The {label} may not contain control characters.", field=field)
    return value


def _clean_text(value: Any, field: str, label: str, limit: int) -> str:
    """One line a person typed: runs of white space become one space, then `check_text`."""
    return check_text(" ".join(value.split()) if isinstance(value, str) else value, field, label, limit)


def _clean_name(name: Any) -> str:
    if name is None or (isinstance(name, str) and not name.strip()):
        raise InvalidInput("Give the token a name.", field="name")
    return _clean_text(name, "name", "name", MAX_NAME)


def _clean_reason(reason: Any) -> str | None:
    """An optional reason: absent or blank means none."""
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        return None
    return _clean_text(reason, "reason", "reason", MAX_REASON)


def _clean_owner_id(owner_id: Any) -> str:
    return check_text(owner_id, "owner_id", "owner id", MAX_OWNER_ID)


def _clean_owner_kind(kind: Any) -> str:
    if kind not in OWNER_KINDS:
        raise InvalidInput(f"An owner is one of: {', '.join(OWNER_KINDS)}.", field="owner_kind")
    return kind
