"""Leak reporting endpoints: whoever finds a token string may have it revoked (docs/ckan-plugin.md).

- `POST /api/mltokens/revoke`: RFC 7009 token revocation. The form body names the
  `token` (and optionally `token_type_hint`); no login. It answers 200 with an empty body
  for every well-formed request, whether the string was a working token or not (RFC 7009
  section 2.2), and 400 `invalid_request` for a malformed one.
- `POST /api/mltokens/leaks`: the bulk report of a secret-scanning service (GitHub's
  secret scanning partner programme sends this shape): a JSON list of
  `{"token", "type", "url", "source"}`, signed with a shared secret
  (`X-Mltokens-Signature: sha256=<hex HMAC-SHA256 of the body>`). Off (404) unless
  `ckanext.mltokens.leak_report_secret` is set.

Both are exempt from CKAN's CSRF protection by design: they act on the token in the body,
never on a session (a cookie sent along changes nothing), so a forged cross-site request
can do no more than its sender could do directly. Both count requests per client address in
CKAN's Redis (`leak_rate_limit` in any 60 seconds, estimated; 429 past it), answer the same to valid and invalid
strings, and take at least `RESPONSE_FLOOR` seconds, so neither the answer nor its time tells
whether a string was a token. Mail to the owner goes out later, from `ckan mltokens
leak-notices` (no mail inside a request).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ckan.model as model
import ckan.plugins.toolkit as tk
from ckan.config.middleware.flask_app import csrf
from ckan.lib.mailer import MailerException
from ckan.lib.redis import connect_to_redis
from flask import Blueprint, Response, make_response
from redis.exceptions import RedisError

from token_service.errors import InvalidInput, TokenServiceError
from token_service.issuers import ORGANIZATION
from token_service.leaks import Found, LeakReports
from token_service.lifecycle import LeakNotice

from . import notify, organizations, service

log = logging.getLogger(__name__)
bp = Blueprint("mltokens_leaks", __name__)

RESPONSE_FLOOR = 0.3  # seconds: a request that revoked answers no later than one that did not
MAX_BODY = 1024 * 1024
MAX_ITEMS = 1000
SIGNATURE_HEADER = "X-Mltokens-Signature"
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    response = make_response(json.dumps(body) if body is not None else "", status)
    response.headers.update({"Cache-Control": "no-store", "Content-Type": "application/json", **(headers or {})})
    return response


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """An RFC 6749 section 5.2 style error (the shape RFC 7009 answers in)."""
    return _json(status, {"error": error, "error_description": description}, headers)


@functools.lru_cache(maxsize=4)
def _reports(settings: Any) -> LeakReports:
    return LeakReports(service.lifecycle())


def reports() -> LeakReports:
    """The process-wide reports (and their key cache) for the current configuration."""
    return _reports(service.settings())


def _over_limit(endpoint: str) -> bool:
    """Count this request against its address's `leak_rate_limit` a minute.

    A sliding-window estimate: this minute's count plus the last minute's, weighted by how
    much of the last minute still lies within 60 seconds of now. A fixed minute would let
    twice the limit through across a minute's turn (and did: a client's fourth request
    against a limit of 3 passed when the minute turned between its third and fourth).
    """
    limit = tk.config.get(service.PREFIX + "leak_rate_limit")
    minute, elapsed = divmod(time.time(), 60)
    prefix = f"{tk.config.get('ckan.site_id')}:mltokens:leaks:{endpoint}:{tk.request.remote_addr}:"
    try:
        pipe = connect_to_redis().pipeline()
        pipe.incr(prefix + str(int(minute)))
        pipe.expire(prefix + str(int(minute)), 120)
        pipe.get(prefix + str(int(minute) - 1))
        current, _, previous = pipe.execute()
    except RedisError:  # reports keep working: a revocation is never the harm a limit guards against
        log.exception("leak endpoints: Redis unavailable, requests are not counted")
        return False
    return current + int(previous or 0) * (1 - elapsed / 60) > limit


def _guarded(endpoint: str) -> Callable[[Callable[[], Response]], Callable[[], Response]]:
    """Rate limit, a minimum response time, and service failures as a generic 503."""

    def decorate(view: Callable[[], Response]) -> Callable[[], Response]:
        @functools.wraps(view)
        def wrapper() -> Response:
            started = time.monotonic()
            if _over_limit(endpoint):
                return _error(429, "slow_down", "Too many requests; try again in a minute.", {"Retry-After": "60"})
            try:
                response = view()
            except TokenServiceError:
                log.exception("leak report (%s) failed", endpoint)
                response = _error(503, "temporarily_unavailable", "Please try again later.", {"Retry-After": "30"})
            time.sleep(max(0.0, RESPONSE_FLOOR - (time.monotonic() - started)))
            return response

        return wrapper

    return decorate


@bp.route("/api/mltokens/revoke", methods=["POST"])
@_guarded("revoke")
def revoke() -> Response:
    """RFC 7009: revoke the token in the form body; 200 whatever it was."""
    if tk.request.mimetype != "application/x-www-form-urlencoded":
        return _error(400, "invalid_request", "Send the token in an application/x-www-form-urlencoded body.")
    form = tk.request.form
    tokens, hints = form.getlist("token"), form.getlist("token_type_hint")
    if len(tokens) != 1 or len(hints) > 1:
        return _error(400, "invalid_request", "Send exactly one token parameter (and at most one token_type_hint).")
    try:
        found = Found.of({"token": tokens[0]}, "revocation endpoint")
    except InvalidInput:
        return _error(400, "invalid_request", "The token parameter must be at most 8192 ASCII characters.")
    # RFC 7009 section 2.1: an unknown hint is ignored (the server searches every kind it has).
    if reports().report(found):
        log.info("a token was revoked through the revocation endpoint")
    return _json(200, None)


def _signed(body: bytes) -> bool:
    secret = tk.config.get(service.PREFIX + "leak_report_secret") or ""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), (tk.request.headers.get(SIGNATURE_HEADER) or "").encode())


@bp.route("/api/mltokens/leaks", methods=["POST"])
@_guarded("report")
def report() -> Response:
    """A secret scanner's report: revoke each working token, record where it was found; 200 `[]` for any."""
    if not tk.config.get(service.PREFIX + "leak_report_secret"):
        return tk.abort(404)
    if (tk.request.content_length or 0) > MAX_BODY:
        return _error(413, "invalid_request", f"The body may be at most {MAX_BODY} bytes.")
    body = tk.request.get_data(cache=False)
    if len(body) > MAX_BODY:
        return _error(413, "invalid_request", f"The body may be at most {MAX_BODY} bytes.")
    if not _signed(body):
        return _error(401, "invalid_signature", f"The {SIGNATURE_HEADER} header does not sign this body.")
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return _error(400, "invalid_request", "The body must be a JSON list.")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
        return _error(400, "invalid_request", f"The body must be a JSON list of 1 to {MAX_ITEMS} items.")
    try:
        found = [Found.of(item, "secret scanning") for item in items]
    except InvalidInput as exc:
        return _error(400, "invalid_request", f"Every item needs a valid {exc.field}.")
    revoked = sum(reports().report(f) for f in found)
    log.info("leak report of %d string(s): %d token(s) revoked", len(found), revoked)
    return _json(200, [])


csrf.exempt(revoke)
csrf.exempt(report)


def send_notices() -> int:
    """Mail each owner whose token was reported found (`ckan mltokens leak-notices`); the count sent."""
    return service.lifecycle().leak_notices(_mail)


def _recipients(notice: LeakNotice) -> tuple[list[model.User], str]:
    """Who is told (the owner; for an organization's token, its admins) and the token page they use."""
    site = tk.config.get("ckan.site_url", "").rstrip("/")
    if notice.owner_kind == ORGANIZATION:
        org = organizations.get(notice.owner_id)
        return (organizations.admins(org), f"{site}/organization/ml-tokens/{org.name}") if org else ([], "")
    user = model.User.get(notice.owner_id)
    return ([user] if user else []), f"{site}/ml-tokens"


def _mail(notice: LeakNotice) -> None:
    """Mail the notice to each recipient through `notify.send_notice` (names and subject made safe
    for the headers). Raises, so the next run tries again, only when the mail server refused every
    recipient: one recipient's failure (logged) neither holds back nor repeats the others' mail."""
    users, page = _recipients(notice)
    if not users:
        log.warning("leak notice for token %s: its owner is gone", notice.token_id)
        return
    where = "\n".join(
        f"  {label}: {value}" for label, value in (("found at", notice.url), ("source", notice.source)) if value
    )
    subject, body = _leak_message(notice, where or tk._("  (no location given)"), page)
    failures: list[MailerException] = []
    for user in users:
        try:
            notify.send_notice(user, subject, body)
        except MailerException as exc:
            log.exception("leak notice for token %s to user %s not sent", notice.token_id, user.id)
            failures.append(exc)
    if len(failures) == len(users):
        raise failures[0]


def _leak_message(notice: LeakNotice, where: str, page: str) -> tuple[str, str]:
    """The subject and body of a leak notice; an organization's admins read of the organization's token
    (as in notify.expiry_message), not of theirs."""
    facts = {
        "name": notice.token_name,
        "org": notice.owner_name,
        "reporter": notice.found_by or "a report",
        "when": notice.reported_at.strftime("%Y-%m-%d %H:%M UTC"),
        "page": page,
    }
    if notice.owner_kind == ORGANIZATION:
        subject = tk._("An ML API token of the organization {org} was found in public and revoked")
        found = tk._(
            'The ML API token "{name}" of the organization {org} was found where others can read it, reported by '
            "{reporter} on {when}, and has been revoked: it no longer works."
        )
        next_step = tk._(
            "If a program still needs it, create a new token on the organization's token page:\n  {page}\n"
            "and keep the new one out of code, logs and public places.\n"
        )
    else:
        subject = tk._("Your ML API token was found in public and revoked")
        found = tk._(
            'Your ML API token "{name}" was found where others can read it, reported by {reporter} on {when}, '
            "and has been revoked: it no longer works."
        )
        next_step = tk._(
            "If a program still needs it, create a new token on your token page:\n  {page}\n"
            "and keep the new one out of code, logs and public places.\n"
        )
    body = "\n\n".join([found.format(**facts), where, next_step.format(**facts)])
    return subject.format(**facts), body
