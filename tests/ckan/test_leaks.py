"""Leak reporting over HTTP against the real CKAN app, PostgreSQL and Redis: the RFC 7009
revocation endpoint, the secret scanners' bulk report, their rate limit, and the owner's mail
sent by `ckan mltokens leak-notices` to a real SMTP server (aiosmtpd) started by the test."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from ckan.tests.helpers import CKANCliRunner
from ckanext.mltokens import service
from ckanext.mltokens.cli import mltokens
from ckanext.mltokens.leaks import RESPONSE_FLOOR
from sqlalchemy import select

from tests.ckan.conftest import Visitor, organization_token
from tests.support.stack import free_port
from token_service.store import AuditEvent

SECRET = "shared-secret-for-tests"
pytestmark = [
    pytest.mark.ckan,
    pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens"),
    pytest.mark.ckan_config("ckanext.mltokens.leak_report_secret", SECRET),
]
REVOKE, REPORT = "/api/mltokens/revoke", "/api/mltokens/leaks"


def status(token_id: str) -> str:
    return service.lifecycle().show(token_id, service.Actor.operator()).status


def events(token_id: str) -> list[AuditEvent]:
    with service.lifecycle().store.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.token_id == token_id).order_by(AuditEvent.id)))


def address() -> str:
    """A client address of its own per test: the rate limit counts per address."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


@pytest.fixture
def client(app: Any) -> Callable[..., Any]:
    """POST as an anonymous client from one address."""
    test_client, remote = app.test_client(), address()

    def post(url: str, **kwargs: Any) -> Any:
        return test_client.post(url, environ_base={"REMOTE_ADDR": remote}, **kwargs)

    return post


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Mltokens-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


# -- RFC 7009 --------------------------------------------------------------------------


def test_whoever_holds_a_token_revokes_it_and_learns_nothing(client: Callable, user: dict, token_of: Callable) -> None:
    token = token_of(user)
    answers = []
    for string in (token["token"], "mlt_" + "x" * 40, token["token"]):  # valid, invalid, already revoked
        started = time.monotonic()
        response = client(REVOKE, data={"token": string, "token_type_hint": "access_token"})
        answers.append((response.status_code, response.data, response.headers.get("Cache-Control")))
        assert time.monotonic() - started >= RESPONSE_FLOOR
    assert answers == [answers[0]] * 3 and answers[0][:2] == (200, b"") and "no-store" in answers[0][2]
    assert status(token["id"]) == "revoked"
    leak = [e for e in events(token["id"]) if e.action == "leak_reported"]
    assert len(leak) == 1 and leak[0].detail == {"reporter": "revocation endpoint", "token_string": "current"}


def test_an_unknown_hint_is_ignored(client: Callable, user: dict, token_of: Callable) -> None:
    token = token_of(user)
    assert client(REVOKE, data={"token": token["token"], "token_type_hint": "some_other_kind"}).status_code == 200
    assert status(token["id"]) == "revoked"


def test_no_csrf_token_is_needed_even_with_a_logged_in_cookie(
    visit: Callable, people: dict, token_of: Callable
) -> None:
    """Deliberately CSRF-exempt: the token in the body is the credential, the session plays no part."""
    token = token_of(people["ann"])
    ann: Visitor = visit(people["ann"])
    assert ann.app.post(REVOKE, data={"token": token["token"]}).status_code == 200
    assert status(token["id"]) == "revoked"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {}},
        {"data": {"token": ["a", "b"]}},
        {"data": {"token": "a", "token_type_hint": ["x", "y"]}},
        {"data": {"token": "mlt_\u00fc"}},
        {"data": {"token": "x" * 8193}},
        {"json": {"token": "mlt_x"}},
        {"data": b"token=abc", "content_type": "text/plain"},
    ],
)
def test_malformed_requests_are_400_invalid_request(client: Callable, kwargs: dict) -> None:
    response = client(REVOKE, **kwargs)
    assert response.status_code == 400 and response.json["error"] == "invalid_request", response.data


def test_get_is_not_served(app: Any) -> None:
    """Only POST (CKAN answers another method on a POST-only route with its 404 page)."""
    assert app.get(REVOKE).status_code in (404, 405)


@pytest.mark.ckan_config("ckanext.mltokens.leak_rate_limit", "3")
def test_rate_limited_per_address(app: Any, client: Callable) -> None:
    assert [client(REVOKE, data={"token": "t"}).status_code for _ in range(3)] == [200] * 3
    over = client(REVOKE, data={"token": "t"})
    assert over.status_code == 429 and over.headers["Retry-After"] == "60" and over.json["error"] == "slow_down"
    elsewhere = app.test_client().post(REVOKE, data={"token": "t"}, environ_base={"REMOTE_ADDR": address()})
    assert elsewhere.status_code == 200


@pytest.mark.ckan_config("ckanext.mltokens.leak_rate_limit", "3")
def test_the_limit_holds_across_a_minute_s_turn(client: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three requests in the last second of a minute, and the fourth just after it turns, is still over."""
    turn = (time.time() // 60 + 1) * 60
    monkeypatch.setattr(time, "time", lambda: turn - 0.5)
    assert [client(REVOKE, data={"token": "t"}).status_code for _ in range(3)] == [200] * 3
    monkeypatch.setattr(time, "time", lambda: turn + 0.5)
    assert client(REVOKE, data={"token": "t"}).status_code == 429
    monkeypatch.setattr(time, "time", lambda: turn + 60.5)
    assert client(REVOKE, data={"token": "t"}).status_code == 200


# -- the bulk report -----------------------------------------------------------------------


def test_a_signed_report_revokes_the_working_tokens_and_records_where(
    client: Callable, user: dict, token_of: Callable
) -> None:
    good, spare = token_of(user, name="leaked"), token_of(user, name="spare")
    items = [
        {
            "token": good["token"],
            "type": "mltokens_api_token",
            "url": "https://github.com/o/r/blob/1/a.py",
            "source": "content",
        },
        {
            "token": "mlt_eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "type": "mltokens_api_token",
            "url": "https://x.test",
        },
    ]
    body = json.dumps(items).encode()
    response = client(REPORT, data=body, headers=signed(body), content_type="application/json")
    assert (response.status_code, response.json) == (200, [])
    assert status(good["id"]) == "revoked" and status(spare["id"]) == "active"
    leak = [e for e in events(good["id"]) if e.action == "leak_reported"][0]
    assert leak.detail == {
        "reporter": "secret scanning",
        "type": "mltokens_api_token",
        "url": "https://github.com/o/r/blob/1/a.py",
        "source": "content",
        "token_string": "current",
    }
    invalid_only = json.dumps(items[1:]).encode()
    again = client(REPORT, data=invalid_only, headers=signed(invalid_only), content_type="application/json")
    assert (again.status_code, again.json) == (200, [])  # the same answer whatever was found


@pytest.mark.parametrize(
    "headers", [{}, {"X-Mltokens-Signature": "sha256=00"}, "wrong secret", "sha1"], ids=["none", "bad", "key", "alg"]
)
def test_an_unsigned_report_is_401_and_changes_nothing(
    client: Callable, user: dict, token_of: Callable, headers
) -> None:
    token = token_of(user)
    body = json.dumps([{"token": token["token"]}]).encode()
    if headers == "wrong secret":
        headers = signed(body, "another")
    elif headers == "sha1":
        headers = {"X-Mltokens-Signature": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()}
    response = client(REPORT, data=body, headers=headers, content_type="application/json")
    assert response.status_code == 401 and response.json["error"] == "invalid_signature"
    assert status(token["id"]) == "active"


@pytest.mark.parametrize(
    "body, code",
    [
        (b"not json", 400),
        (b"{}", 400),
        (b"[]", 400),
        (json.dumps([{"token": "t"}] * 1001).encode(), 400),
        (b"[" * 100000 + b"]" * 100000, 400),
        (json.dumps([{"token": "t", "url": ["x"]}]).encode(), 400),
        (json.dumps([{"token": "t", "url": "a\u0000b"}]).encode(), 400),
        (b" " * (1024 * 1024 + 1), 413),
    ],
    ids=["text", "object", "empty", "too-many", "deep", "url-list", "url-nul", "too-large"],
)
def test_bad_reports_are_4xx_and_revoke_nothing(
    client: Callable, user: dict, token_of: Callable, body: bytes, code: int
) -> None:
    token = token_of(user)
    if body.startswith(b"[{"):  # a valid token first, then the bad item: nothing at all is revoked
        body = json.dumps([{"token": token["token"]}, *json.loads(body)]).encode()
    response = client(REPORT, data=body, headers=signed(body), content_type="application/json")
    assert response.status_code == code, response.data
    assert status(token["id"]) == "active"


def test_the_report_endpoint_is_off_without_a_secret(client: Callable, ckan_config: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(ckan_config, "ckanext.mltokens.leak_report_secret", "")
    body = b'[{"token": "t"}]'
    assert client(REPORT, data=body, headers=signed(body, ""), content_type="application/json").status_code == 404


# -- the owner's mail ------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.refused = "refuse-"  # recipients starting so are refused (550), as a mailbox that does not exist

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if address.startswith(self.refused):
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_the_owner_is_mailed_once_by_the_notice_job(
    app: Any, client: Callable, token_of: Callable, smtp: tuple[Inbox, int], ckan_config: Any, monkeypatch: Any
) -> None:
    from ckan.tests import factories

    inbox, port = smtp
    monkeypatch.setitem(ckan_config, "smtp.server", f"127.0.0.1:{port}")
    monkeypatch.setitem(ckan_config, "smtp.mail_from", "tokens@ckan.test")
    owner = factories.User(email="owner@example.org")
    token = token_of(owner, name='<b>"prod" key</b>')
    body = json.dumps([{"token": token["token"], "url": "https://github.com/o/r/blob/1/.env", "source": "commit"}])
    client(REPORT, data=body.encode(), headers=signed(body.encode()), content_type="application/json")
    assert inbox.messages == []  # nothing is mailed inside the request
    runner = CKANCliRunner(env={"CKAN_INI": ckan_config["__file__"]})
    first = runner.invoke(mltokens, ["leak-notices"])
    assert first.exit_code == 0 and "1 leak notice(s) sent" in first.output, first.output
    assert runner.invoke(mltokens, ["leak-notices"]).output.strip().endswith("0 leak notice(s) sent")
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert message["To"].endswith("<owner@example.org>")
    text = message.get_payload(decode=True).decode()
    assert '"<b>"prod" key</b>"' in text  # plain text: the name as typed, nothing to escape
    assert "https://github.com/o/r/blob/1/.env" in text and "http://test.ckan.net/ml-tokens" in text
    assert token["token"] not in text


def test_an_organizations_leaked_token_is_told_to_its_admins(
    app: Any, client: Callable, smtp: tuple[Inbox, int], ckan_config: Any, monkeypatch: Any
) -> None:
    """An organization has no mailbox: its admins, who manage its tokens, are told, with its token page."""
    inbox, port = smtp
    monkeypatch.setitem(ckan_config, "smtp.server", f"127.0.0.1:{port}")
    monkeypatch.setitem(ckan_config, "smtp.mail_from", "tokens@ckan.test")
    org, token, admins = organization_token("nightly")
    body = json.dumps([{"token": token["token"], "url": "https://gist.example/1", "source": "gist"}]).encode()
    client(REPORT, data=body, headers=signed(body), content_type="application/json")
    assert status(token["id"]) == "revoked"
    result = CKANCliRunner(env={"CKAN_INI": ckan_config["__file__"]}).invoke(mltokens, ["leak-notices"])
    assert result.exit_code == 0 and "1 leak notice(s) sent" in result.output, result.output
    assert sorted(m["To"].rsplit("<", 1)[1].rstrip(">") for m in inbox.messages) == admins
    text = inbox.messages[0].get_payload(decode=True).decode()
    assert f"http://test.ckan.net/organization/ml-tokens/{org['name']}" in text and "https://gist.example/1" in text
    # the organization's token, not the reader's (as the expiry warning says)
    subjects = {" ".join(m["Subject"].split()) for m in inbox.messages}  # unfolded
    assert subjects == {f"An ML API token of the organization {org['name']} was found in public and revoked"}
    assert text.startswith(f'The ML API token "nightly" of the organization {org["name"]} was found where others')
    assert "Your " not in text and "your token page" not in text and "the organization's token page" in text


def test_each_admin_is_mailed_once_whatever_another_admins_name_or_mailbox(
    app: Any, client: Callable, smtp: tuple[Inbox, int], ckan_config: Any, monkeypatch: Any
) -> None:
    """A full name with a line break is one line in the header; a mailbox the server refuses is
    logged; neither keeps the notice from the other admins nor sends it to them again."""
    from ckan.tests import factories
    from ckan.tests.helpers import call_action

    inbox, port = smtp
    monkeypatch.setitem(ckan_config, "smtp.server", f"127.0.0.1:{port}")
    monkeypatch.setitem(ckan_config, "smtp.mail_from", "tokens@ckan.test")
    org, token, admins = organization_token("nightly")
    tag = uuid.uuid4().hex[:8]
    eve = factories.User(fullname="Eve\nBcc: evil@example.org", email=f"eve-{tag}@example.org")
    gone = factories.User(email=f"refuse-{tag}@example.org")
    for admin in (eve, gone):
        call_action("organization_member_create", id=org["id"], username=admin["name"], role="admin")
    body = json.dumps([{"token": token["token"]}]).encode()
    client(REPORT, data=body, headers=signed(body), content_type="application/json")
    runner = CKANCliRunner(env={"CKAN_INI": ckan_config["__file__"]})
    first = runner.invoke(mltokens, ["leak-notices"])
    assert first.exit_code == 0 and "1 leak notice(s) sent" in first.output, first.output
    assert runner.invoke(mltokens, ["leak-notices"]).output.strip().endswith("0 leak notice(s) sent")
    to = sorted(m["To"].rsplit("<", 1)[1].rstrip(">") for m in inbox.messages)
    assert to == sorted([*admins, eve["email"]])
    header = next(m["To"] for m in inbox.messages if eve["email"] in m["To"])
    assert "\n" not in header and "Eve Bcc: evil@example.org" in " ".join(header.split())
    assert all(m["Bcc"] is None for m in inbox.messages)
