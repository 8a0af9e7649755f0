"""`ckan mltokens notify` against a real SMTP server (aiosmtpd, its own process): expiry warnings
arrive once per token, lead time and recipient, with what the owner needs and nothing secret;
hostile names stay inside their headers; runs repeated or concurrent send nothing twice."""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ckan.model as model
import pytest
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckanext.mltokens import service
from freezegun import freeze_time
from sqlalchemy import text

from devstack.services import free_port
from tests.ckan.conftest import organization_token

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")

MAIL_FROM = "tokens@ckan.test"


class SmtpServer:
    """aiosmtpd's own command-line server, storing every message it accepts in a Maildir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mlt-smtp-"))
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}"]
            + ["-c", "aiosmtpd.handlers.Mailbox", str(self.dir / "maildir")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("aiosmtpd did not start") from None
                time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def messages(self) -> list[email.message.EmailMessage]:
        box = mailbox.Maildir(self.dir / "maildir", create=True)
        return [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in box.keys()]

    def clear(self) -> None:
        mailbox.Maildir(self.dir / "maildir", create=True).clear()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server: SmtpServer, ckan_config: dict, monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    monkeypatch.setitem(ckan_config, "smtp.server", smtp_server.address)
    monkeypatch.setitem(ckan_config, "smtp.mail_from", MAIL_FROM)
    smtp_server.clear()
    return smtp_server


def notify(cli: Any, exit_code: int = 0) -> str:
    result = cli.invoke(ckan, ["mltokens", "notify"])
    assert result.exit_code == exit_code, result.output
    return result.output


def expiring(token: dict[str, Any], left: timedelta, lifetime: timedelta = timedelta(days=30)) -> datetime:
    """Move a token's expiry to `left` from now (issued `lifetime` before that); returns the expiry."""
    expires = datetime.now(UTC).replace(microsecond=0) + left
    with service.lifecycle().store.transaction() as s:
        s.execute(
            text("UPDATE mltokens.token SET expires_at = :e, issued_at = :i WHERE id = :id"),
            {"e": expires, "i": expires - lifetime, "id": token["id"]},
        )
    return expires


def owner(**fields: Any) -> dict[str, Any]:
    return factories.User(**fields)


def test_the_owner_gets_the_warning_once_with_name_expiry_last_use_and_renew_link(
    cli: Any, smtp: SmtpServer, token_of: Callable
) -> None:
    alice = owner(fullname="Alice Ng", email="alice@example.org")
    token = token_of(alice, name="nightly notebook")
    expires = expiring(token, timedelta(hours=20))
    quiet = token_of(owner(email="quiet@example.org"), name="far off")
    expiring(quiet, timedelta(days=20))

    assert "sent 1 expiry warning(s)" in notify(cli)
    (message,) = smtp.messages()
    assert message["X-RcptTo"] == "alice@example.org"
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["To"].addresses[0].display_name == "Alice Ng"
    assert MAIL_FROM in message["From"]
    assert message["Subject"] == 'Your ML API token "nightly notebook" expires in 1 day'
    body = message.get_body(("plain",)).get_content()
    assert "nightly notebook" in body and "model:sentiment:predict" in body
    assert expires.strftime("%Y-%m-%d %H:%M UTC") in body
    assert "Last used:  never" in body
    assert f"http://test.ckan.net/user/{alice['name']}/ml-tokens" in body
    assert token["token"] not in message.as_string() and token["token"].split(".")[2] not in message.as_string()

    assert "sent 0 expiry warning(s), 1 already sent" in notify(cli)  # run again: nothing new
    assert len(smtp.messages()) == 1


def test_seven_days_then_one_day_and_again_after_a_renewal(cli: Any, smtp: SmtpServer, token_of: Callable) -> None:
    bob = owner(email="bob@example.org")
    token = token_of(bob, name="svc")
    expires = expiring(token, timedelta(days=6, hours=23))
    notify(cli)
    notify(cli)
    with freeze_time(expires - timedelta(hours=23), tick=True):  # six days later
        notify(cli)
    subjects = [m["Subject"] for m in smtp.messages()]
    assert sorted(subjects) == sorted(
        ['Your ML API token "svc" expires in 7 days', 'Your ML API token "svc" expires in 1 day']
    )
    expiring(token, timedelta(hours=22))  # renewed: a new expiry is warned about again
    notify(cli)
    assert len(smtp.messages()) == 3


def test_turned_off_short_lived_and_revoked_tokens_get_no_mail(
    cli: Any, smtp: SmtpServer, token_of: Callable, act: Callable
) -> None:
    carol = owner(email="carol@example.org")
    off = token_of(carol, name="off")
    act("mltoken_patch", carol["name"], id=off["id"], expiry_notices=False)
    expiring(off, timedelta(hours=5))
    short = token_of(carol, name="three days")
    expiring(short, timedelta(days=2), lifetime=timedelta(days=3))  # never crossed the 7-day mark
    gone = token_of(carol, name="gone")
    expiring(gone, timedelta(hours=5))
    act("mltoken_revoke", carol["name"], id=gone["id"])
    assert "sent 0 expiry warning(s)" in notify(cli)
    assert smtp.messages() == []


def test_hostile_names_stay_in_their_headers(cli: Any, smtp: SmtpServer, token_of: Callable) -> None:
    """A token name stored before today's checks and a CKAN full name, both with CR LF and a header
    behind them, end up as text in one Subject and one To header: no Bcc, no other recipient."""
    mallory = owner(email="mallory@example.org")
    user = model.User.get(mallory["id"])
    user.fullname = "Mal\r\nBcc: victim@example.org\r\nX-Evil: 1"
    model.Session.commit()
    token = token_of(mallory, name="placeholder")
    hostile = 'ok"\r\nBcc: victim@example.org\r\n\r\nbody =?utf-8?q?x?= \u202e<script>'
    with service.lifecycle().store.transaction() as s:
        s.execute(text("UPDATE mltokens.token SET name = :n WHERE id = :id"), {"n": hostile, "id": token["id"]})
    expiring(token, timedelta(hours=3))

    notify(cli)
    (message,) = smtp.messages()
    assert message["X-RcptTo"] == "mallory@example.org"
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert "victim" not in message["X-RcptTo"] and "\n" not in message["Subject"]
    assert message["Subject"].startswith('Your ML API token "ok" Bcc: victim@example.org body')
    assert message["To"].addresses[0].addr_spec == "mallory@example.org"
    assert "\n" not in message["To"].addresses[0].display_name


def test_a_mail_server_failure_sends_nothing_and_the_next_run_retries(
    cli: Any, smtp: SmtpServer, token_of: Callable, ckan_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    dave = owner(email="dave@example.org")
    expiring(token_of(dave, name="d"), timedelta(hours=3))
    monkeypatch.setitem(ckan_config, "smtp.server", f"127.0.0.1:{free_port()}")  # nobody listens
    assert "1 failed" in notify(cli, exit_code=1)
    monkeypatch.setitem(ckan_config, "smtp.server", smtp.address)
    assert "sent 1 expiry warning(s)" in notify(cli)
    assert [m["X-RcptTo"] for m in smtp.messages()] == ["dave@example.org"]


def test_without_a_mail_server_the_command_refuses(cli: Any, ckan_config: dict, monkeypatch) -> None:
    monkeypatch.setitem(ckan_config, "smtp.server", "")
    assert "smtp.server is not set" in notify(cli, exit_code=1)


def test_users_without_an_address_are_skipped(cli: Any, smtp: SmtpServer, token_of: Callable) -> None:
    erin = owner(email="erin@example.org")
    token = token_of(erin, name="e")
    user = model.User.get(erin["id"])
    user.email = "not an address\r\nBcc: x@example.org"
    model.Session.commit()
    expiring(token, timedelta(hours=3))
    assert "sent 0 expiry warning(s), 1 already sent or undeliverable" in notify(cli)
    assert smtp.messages() == []


def test_two_runs_at_once_send_each_warning_once(smtp: SmtpServer, token_of: Callable, ckan_config: dict) -> None:
    """Two `ckan mltokens notify` processes started together, as two CronJob pods might be."""
    users = [owner(email=f"many{i}@example.org") for i in range(8)]
    for user in users:
        expiring(token_of(user, name="many"), timedelta(hours=2))
    env = {
        **os.environ,
        "CKAN_INI": ckan_config["__file__"],
        "CKAN_SMTP_SERVER": smtp.address,
        "CKAN_SMTP_MAIL_FROM": MAIL_FROM,
    }
    command = [str(Path(sys.executable).with_name("ckan")), "mltokens", "notify"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    recipients = sorted(m["X-RcptTo"] for m in smtp.messages())
    assert recipients == sorted(f"many{i}@example.org" for i in range(8))


def test_an_organizations_token_warns_its_admins(cli: Any, smtp: SmtpServer) -> None:
    """An organization has no mailbox: each of its active admins is told once, with the organization's page."""
    org, token, admins = organization_token("batch scoring")
    expiring(token, timedelta(hours=20))

    assert "sent 2 expiry warning(s)" in notify(cli)
    messages = smtp.messages()
    assert sorted(m["X-RcptTo"] for m in messages) == admins
    assert {m["Subject"] for m in messages} == {f'The ML API token "batch scoring" of {org["name"]} expires in 1 day'}
    body = messages[0].get_body(("plain",)).get_content()
    assert f"http://test.ckan.net/organization/ml-tokens/{org['name']}" in body
    assert notify(cli).startswith("sent 0 expiry warning(s)")  # each admin told once
    assert len(smtp.messages()) == 2
