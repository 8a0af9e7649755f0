"""E-mail to token owners through CKAN's mailer: the expiry warnings of `ckan mltokens notify`.

Mail goes out from the CLI job only, never inside a web request. `recipients` names who
answers for a token and `send_notice` sends one plain-text notice to one of them; any
other notice about a token (say, that it was reported leaked) is those two calls.

Every text that reaches a header (the subject, the recipient's name) is made one line of
printable characters first: a token name or a user's full name cannot add a header.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.lib import mailer

from token_service.errors import ConfigError
from token_service.issuers import ORGANIZATION
from token_service.lifecycle import DueNotice, Lifecycle, TokenInfo
from token_service.settings_schema import parse_list

from . import compat, organizations, service

log = logging.getLogger(__name__)

MAX_HEADER_TEXT = 150
# An address for one SMTP recipient: no white space, control characters, commas or angle brackets.
_ADDRESS = re.compile(r"[^\s<>,;\"()@]+@[^\s<>,;\"()@]+\.[^\s<>,;\"()@]+")


class NoMailServer(ConfigError):
    """Neither `smtp.server` nor a plugin implementing INotifier: nothing could be sent."""


@dataclass(frozen=True)
class Report:
    sent: int
    skipped: int
    failed: int


def expiry_leads() -> list[timedelta]:
    """`ckanext.mltokens.expiry_notices`: how long before expiry owners are warned (default 7d 1d)."""
    key = service.PREFIX + "expiry_notices"
    raw = tk.config.get(key)
    values = parse_list(raw.split() if isinstance(raw, str) else raw or [], key)
    leads = sorted({service.parse_duration(value, key) for value in values}, reverse=True)
    if any(lead <= timedelta(0) for lead in leads):
        raise ConfigError(f"{key}: every lead time must be positive")
    return leads


def header_text(value: str) -> str:
    """One line for a mail header: control and format characters (CR, LF, NUL, bidi) become spaces."""
    cleaned = "".join(" " if unicodedata.category(c).startswith(("C", "Z")) else c for c in value)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= MAX_HEADER_TEXT else cleaned[: MAX_HEADER_TEXT - 1] + "…"


def recipients(token: TokenInfo) -> list[model.User]:
    """Who is told about the token: its owner, if an active CKAN user; for an organization's
    token, the organization's active admins (who manage its tokens)."""
    if token.owner_kind == ORGANIZATION:
        org = organizations.get(token.owner_id)
        return organizations.admins(org) if org is not None else []
    user = model.User.get(token.owner_id)
    return [user] if user is not None and user.state == model.State.ACTIVE else []


def mail_server_ready() -> None:
    if not tk.config.get("smtp.server") and not compat.notifier_plugins():
        raise NoMailServer("smtp.server is not set: CKAN's mailer would send nothing")


def send_notice(user: model.User, subject: str, body: str) -> bool:
    """Send one plain-text notice to one user through CKAN's mailer; False (logged) when the
    user has no usable e-mail address. A mail server's failure raises MailerException."""
    address = (user.email or "").strip()
    if not _ADDRESS.fullmatch(address):
        log.warning("user %s has no usable e-mail address; notice %r not sent", user.id, header_text(subject))
        return False
    mailer.mail_recipient(header_text(user.display_name or user.name), address, header_text(subject), body)
    return True


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else tk._("never")


def _lead_text(lead: timedelta) -> str:
    days, hours = lead.days, lead.seconds // 3600
    if days and not hours:
        return tk.ungettext("{n} day", "{n} days", days).format(n=days)
    hours = int(lead.total_seconds() // 3600)
    return tk.ungettext("{n} hour", "{n} hours", max(hours, 1)).format(n=max(hours, 1))


def expiry_message(notice: DueNotice, user: model.User) -> tuple[str, str]:
    """The subject and body of an expiry warning (plain text; never the token string, which is not stored)."""
    token = notice.token
    site = tk.config.get("ckan.site_title") or "CKAN"
    of_org = token.owner_kind == ORGANIZATION
    renew = tk.url_for("mltokens_org.index" if of_org else "mltokens.index", id=token.owner_name, _external=True)
    settings_note = tk._('To stop these warnings for this token, untick "E-mail before expiry" on that page.')
    lead = _lead_text(notice.lead)
    if of_org:
        subject = tk._('The ML API token "{name}" of {org} expires in {lead}').format(
            name=token.name, org=token.owner_name, lead=lead
        )
    else:
        subject = tk._('Your ML API token "{name}" expires in {lead}').format(name=token.name, lead=lead)
    body = "\n".join(
        [
            tk._("Hello {name},").format(name=user.display_name or user.name),
            "",
            (
                tk._("an ML API token of the organization {org} on {site} expires soon:").format(
                    org=token.owner_name, site=site
                )
                if of_org
                else tk._("an ML API token of yours on {site} expires soon:").format(site=site)
            ),
            "",
            tk._("  Token:      {name}").format(name=token.name),
            tk._("  Roles:      {roles}").format(roles=", ".join(token.roles)),
            tk._("  Expires:    {when}").format(when=_when(token.expires_at)),
            tk._("  Last used:  {when}").format(when=_when(token.last_used_at)),
            "",
            tk._("Programs using it stop working when it expires. Renew it here:"),
            renew,
            "",
            settings_note,
        ]
    )
    return subject, body


def send_expiry_notices(lifecycle: Lifecycle, leads: Iterable[timedelta]) -> Report:
    """Mail every due expiry warning once: claimed per recipient (see Lifecycle.claim_notice), sent, committed.

    A failure to send leaves that warning unclaimed for the next run and goes on with the others.
    """
    mail_server_ready()
    sent = skipped = failed = 0
    for notice in lifecycle.due_notices(leads):
        for user in recipients(notice.token):
            try:
                with lifecycle.claim_notice(notice, user.id) as mine:
                    if not mine:
                        skipped += 1
                        continue
                    subject, body = expiry_message(notice, user)
                    if send_notice(user, subject, body):
                        sent += 1
                    else:
                        skipped += 1
            except mailer.MailerException:
                log.exception(
                    "expiry warning for token %s to user %s not sent; the next run retries", notice.token.id, user.id
                )
                failed += 1
    return Report(sent, skipped, failed)
