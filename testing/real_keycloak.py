"""The real Keycloak server distribution, started once per test session.

`.ci/install` unpacks a pinned `keycloak-quarkus-dist` into `.cache/keycloak/` and runs
`kc.sh build --db=postgres --health-enabled=true` there, so a session only runs
`kc.sh start --optimized`: production mode on the machine's PostgreSQL (a database of the
session's own, dropped at the end), plain HTTP on loopback, the bootstrap admin from
environment variables, health on the management port.

It runs as deploy/compose.yml runs Keycloak: with a public `hostname` (a full URL) and
dynamic back-channel URLs (Keycloak 26's hostname v2). Tests call it at
`http://127.0.0.1:<port>` (the back channel, as CKAN and the validator call `keycloak:8080`
in compose), while every token's `iss` is `http://localhost:<port>/realms/…` (the public
URL, as `localhost:8080` is in compose): the two differ, as they do in production.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from testing.keycloak_server.fixtures import KeycloakServerInfo

ROOT = Path(__file__).resolve().parents[1]
VERSION = "26.7.3"  # the one .ci/install fetches; docs/keycloak.md says why this one
HOME = ROOT / ".cache" / "keycloak" / f"keycloak-{VERSION}"
PG = dict(host="127.0.0.1", port=5432, user="postgres")
START_TIMEOUT = float(os.environ.get("MLTOKENS_TEST_KEYCLOAK_START_TIMEOUT", "420"))


class KeycloakUnavailable(RuntimeError):
    """The distribution is missing or the server did not become ready."""


PORT_ATTEMPTS = 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin_sql(statement: sql.Composable) -> None:
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def public_url(url: str) -> str:
    """The `hostname` a Keycloak started here has: its URL, named `localhost` instead of by address."""
    return url.replace("://127.0.0.1:", "://localhost:")


def server_info(url: str, admin_user: str, admin_password: str) -> KeycloakServerInfo:
    parts = urllib.parse.urlsplit(url)
    return KeycloakServerInfo(
        url, parts.hostname or "127.0.0.1", parts.port or 80, admin_user, admin_password, public_url(url)
    )


@dataclass
class RealKeycloak:
    """One running Keycloak; `url` is python-keycloak's `server_url`."""

    url: str
    management_url: str
    admin_user: str
    admin_password: str
    database: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, log_dir: Path, admin_user: str = "admin", admin_password: str = "admin") -> RealKeycloak:
        """Start a server on free ports; again on new ones if a port was taken meanwhile (Keycloak binds
        its ports some 20 s after they were found free, and another process may take one first)."""
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return cls._start(log_dir, admin_user, admin_password)
            except KeycloakUnavailable as exc:
                if "Address already in use" not in str(exc):
                    raise
        return cls._start(log_dir, admin_user, admin_password)

    @classmethod
    def _start(cls, log_dir: Path, admin_user: str, admin_password: str) -> RealKeycloak:
        kc_sh = HOME / "bin" / "kc.sh"
        if not (HOME / ".built").is_file():
            raise KeycloakUnavailable(f"{HOME} is not there or not built: run .ci/install")
        database = f"mlt_keycloak_{uuid.uuid4().hex[:10]}"
        _admin_sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        port, management = _free_port(), _free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / "keycloak.log"
        env = {
            **os.environ,
            "KC_BOOTSTRAP_ADMIN_USERNAME": admin_user,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
            "JAVA_OPTS_KC_HEAP": "-Xms128m -Xmx768m",
        }
        argv = [
            str(kc_sh),
            "start",
            "--optimized",
            f"--db-url=jdbc:postgresql://{PG['host']}:{PG['port']}/{database}",
            f"--db-username={PG['user']}",
            "--http-enabled=true",
            f"--hostname={public_url(f'http://127.0.0.1:{port}')}",
            "--hostname-backchannel-dynamic=true",
            "--http-host=127.0.0.1",
            f"--http-port={port}",
            f"--http-management-port={management}",
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = cls(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{management}",
            admin_user,
            admin_password,
            database,
            process,
            log_path,
        )
        try:
            server._wait_ready(START_TIMEOUT)
        except KeycloakUnavailable:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise KeycloakUnavailable(f"Keycloak exited with status {self.process.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.management_url + "/health/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.5)
        raise KeycloakUnavailable(f"Keycloak not ready within {timeout:.0f}s\n{self.log_tail()}")

    def info(self) -> KeycloakServerInfo:
        """The same description of a server as the test server's fixture gives."""
        return server_info(self.url, self.admin_user, self.admin_password)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        with contextlib.suppress(psycopg2.Error):
            _admin_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database)))


#: Dev only: the URL of a real Keycloak already running (admin/admin in master), started by
#: hand with `RealKeycloak.start` (so its hostname is that URL at localhost), so repeated
#: test runs do not start their own.
EXTERNAL_URL_VAR = "MLTOKENS_TEST_REAL_KEYCLOAK_URL"


@pytest.fixture(scope="session")
def real_keycloak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeycloakServerInfo]:
    """One real Keycloak for the whole session, started by the first test that asks for it.

    Mark such tests `@pytest.mark.xdist_group("keycloak-real")` so that under
    `--dist loadgroup` they all run on one worker and only one server starts.
    """
    external = os.environ.get(EXTERNAL_URL_VAR)
    if external:
        yield server_info(external.rstrip("/"), "admin", "admin")
        return
    server = RealKeycloak.start(tmp_path_factory.mktemp("real-keycloak"))
    try:
        yield server.info()
    finally:
        server.stop()
