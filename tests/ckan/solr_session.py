"""One real Solr 9 (devstack/solr) per CKAN test session, for CKAN's search and dataset pages.

It is started at session start, before CKAN builds its app, with `CKAN_SOLR_URL` (which CKAN
reads over test.ini's `solr_url`) pointing at it; the JVM comes up while CKAN loads, and the
session fixture `solr` (autouse) waits for it once, before the first test. Its index lives in
a temporary directory removed at the end. Solr exits when the session's end of its stdin pipe
closes, so even a killed session leaves no JVM behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import solr
from devstack.services import free_port, wait_ready

START_TIMEOUT = float(os.environ.get("MLTOKENS_TEST_SOLR_START_TIMEOUT", "120"))


@dataclass
class SessionSolr:
    """The session's Solr: `url` is CKAN's solr_url."""

    url: str
    ready_url: str
    home: Path
    process: subprocess.Popen[bytes]
    started: float
    startup_seconds: float | None = None
    waited_seconds: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.home / "solr.log"

    def wait(self) -> None:
        if self.startup_seconds is not None:
            return
        asked = time.monotonic()
        try:
            wait_ready(self.ready_url, START_TIMEOUT, self.process)
        except (RuntimeError, TimeoutError) as exc:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"Solr for the CKAN tests: {exc}\n--- {self.log_path} ---\n{tail}") from None
        self.startup_seconds = time.monotonic() - self.started
        self.waited_seconds = time.monotonic() - asked

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdin:
            self.process.stdin.close()


KEY = pytest.StashKey[SessionSolr]()


# Hooks of this module, a plugin that conftest.py's pytest_configure registers under --ckan-ini.


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    home = Path(tempfile.mkdtemp(prefix="mlt-solr-"))
    port = free_port()
    solr.prepare_home(home)
    with (home / "solr.log").open("ab") as log:
        process = subprocess.Popen(
            solr.argv(home, port, home, exit_on_stdin_eof=True),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    session.config.stash[KEY] = SessionSolr(solr.url(port), solr.ready_url(port), home, process, time.monotonic())
    os.environ["CKAN_SOLR_URL"] = solr.url(port)


def pytest_sessionfinish(session: pytest.Session) -> None:
    running = session.config.stash.get(KEY, None)
    if running is not None:
        running.stop()
        shutil.rmtree(running.home, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    running = config.stash.get(KEY, None)
    if running is not None and running.startup_seconds is not None:
        terminalreporter.write_line(
            f"solr: ready {running.startup_seconds:.1f}s after the session started it "
            f"(the first test waited {running.waited_seconds:.1f}s of it)"
        )


@pytest.fixture(scope="session", autouse=True)
def solr_for_ckan(request: pytest.FixtureRequest) -> SessionSolr:
    """The session's Solr, ready (waited for once, before the first test)."""
    running = request.config.stash[KEY]
    running.wait()
    return running
