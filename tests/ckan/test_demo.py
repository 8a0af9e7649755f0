"""demo/ckan.py: the demo CKAN is prepared from scratch, runs, and its demo accounts can make tokens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from sqlalchemy import text

from demo.ckan import ORGANIZATION, SYSADMIN, USER, CkanSite, prepare, publish, spec, welcome, write_ini
from demo.run import Ports, services
from devstack import solr
from devstack.services import BIN, ROOT, free_port, start, who_listens
from tests.ckan.solr_session import SessionSolr
from tests.support import pg
from token_service.config import Settings
from token_service.issuers.local import LocalIssuer
from token_service.lifecycle import utcnow
from token_service.store import Store

ISSUER = "http://127.0.0.1:8901"
MODEL_API = "http://127.0.0.1:8080/v1/models/sentiment/predict"


def log_in(site_url: str, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    form = session.get(f"{site_url}/user/login", timeout=30)
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1)
    landed = session.post(
        f"{site_url}/user/login", timeout=30, data={"login": name, "password": password, "_csrf_token": csrf}
    )
    return session, landed


@pytest.mark.timeout(600)  # two CKAN preparations and model publications, one CKAN start, on two shared cores
def test_demo_ckan_from_scratch_then_again(tmp_path: Path, solr_for_ckan: SessionSolr) -> None:
    """(On the session's Solr: the demo's own, devstack.services.solr_spec, is the same launcher.)"""
    with pg.database(prefix="mlt_demo_test") as db_url:
        demo = dict(
            issuer_url=ISSUER,
            passphrase="demo-pass",
            model_api_url=MODEL_API,
            solr_url=solr_for_ckan.url,
            workdir=tmp_path,
        )
        site = prepare(db_url, port=free_port(), **demo)
        publish(site)
        again = prepare(db_url, port=free_port(), **demo)  # prepared a second time: the same site
        publish(again)
        assert again.accounts == site.accounts and set(site.accounts) == {SYSADMIN, USER}
        assert (tmp_path / "ckan-users.json").stat().st_mode & 0o077 == 0
        assert f"{USER} / {site.accounts[USER]}" in welcome(again)

        ckan = start(spec(again), tmp_path / "logs", timeout=90)
        try:
            user, landed = log_in(again.url, USER, again.accounts[USER])
            assert landed.url == f"{again.url}/user/{USER}/ml-tokens"
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', landed.text).group(1)
            nonce = re.search(r'name="mltoken_form" value="([^"]+)"', landed.text).group(1)
            made = user.post(
                landed.url,
                timeout=30,
                data={
                    "_csrf_token": csrf,
                    "mltoken_form": nonce,
                    "name": "demo notebook",
                    "expiry": "86400",
                    "roles": "model:sentiment:predict",
                },
            )
            secret = re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', made.text).group(1)
            assert MODEL_API in made.text

            store = Store(db_url)
            try:
                settings = Settings.from_mapping({"database_url": db_url, "issuer_url": ISSUER})
                keys = jwt.PyJWKSet.from_dict(LocalIssuer(settings, store, utcnow).jwks())
            finally:
                store.dispose()
            assert secret.startswith("mlt_eyJ")
            kid = jwt.get_unverified_header(secret.removeprefix("mlt_"))["kid"]
            claims = jwt.decode(
                secret.removeprefix("mlt_"),
                next(k for k in keys.keys if k.key_id == kid).key,
                algorithms=["RS256"],
                audience="model-api",
                issuer=ISSUER,
            )
            assert claims["owner_name"] == USER and claims["roles"] == ["model:sentiment:predict"]

            admin, _ = log_in(again.url, SYSADMIN, again.accounts[SYSADMIN])
            listing = admin.get(f"{again.url}/ckan-admin/ml-tokens", timeout=30)
            assert listing.status_code == 200 and "demo notebook" in listing.text

            # With Solr, the pages that search answer too.
            for page in ("/", "/dataset", f"/user/{USER}", "/organization"):
                assert user.get(f"{again.url}{page}", timeout=30).status_code == 200, page

            walk_through_access_follows_the_catalogue(again, user, db_url)
        finally:
            ckan.stop()


def walk_through_access_follows_the_catalogue(site: CkanSite, user: requests.Session, db_url: str) -> None:
    """The README's walk-through: demo-user reads the private vision model as a member of the demo
    organization, makes a token for it; removed from the organization, the token is revoked."""
    assert requests.get(f"{site.url}/dataset/vision-model", timeout=30).status_code == 404  # private
    page = user.get(f"{site.url}/dataset/vision-model", timeout=30)
    assert page.status_code == 200 and 'id="model-api"' in page.text
    groups = user.get(f"{site.url}/api/3/action/mltoken_roles_list", timeout=30).json()["result"]
    assert {g["model_id"]: g["roles"] for g in groups} == {
        "sentiment": ["model:sentiment:predict"],
        "vision": ["model:vision:predict"],
    }
    form = user.get(f"{site.url}/user/{USER}/ml-tokens", timeout=30)
    made = user.post(
        form.url,
        timeout=30,
        data={
            "_csrf_token": re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1),
            "mltoken_form": re.search(r'name="mltoken_form" value="([^"]+)"', form.text).group(1),
            "name": "vision notebook",
            "expiry": "86400",
            "roles": "model:vision:predict",
        },
    )
    assert 'id="mltoken-secret"' in made.text, made.text[-2000:]

    api_token = (
        subprocess.run(
            [str(BIN / "ckan"), "-c", str(site.ini), "user", "token", "add", SYSADMIN, "walk-through"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **site.env},
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
        .strip()
    )
    removed = requests.post(
        f"{site.url}/api/3/action/organization_member_delete",
        headers={"Authorization": api_token},
        json={"id": ORGANIZATION, "username": USER},
        timeout=30,
    )
    assert removed.status_code == 200, removed.text
    store = Store(db_url)
    try:
        with store.transaction() as session:
            status, reason = session.execute(
                text("SELECT status, revoke_reason FROM mltokens.token WHERE name = 'vision notebook'")
            ).one()
    finally:
        store.dispose()
    assert status == "revoked"
    assert f"user {USER} removed from organization {ORGANIZATION}" in reason and "dataset vision-model" in reason


def test_demo_starts_its_solr_before_ckan_and_ckan_searches_there(tmp_path: Path) -> None:
    """(The whole demo with CKAN is slow to start: this checks the wiring; the test above runs the CKAN.)"""
    ports = Ports(solr=free_port())
    site = CkanSite(tmp_path / "ckan.ini", "postgresql://unused", "http://127.0.0.1:5000", {})
    specs = services(tmp_path / "mltokens.toml", ports, "nginx", site, tmp_path)
    assert [spec.name for spec in specs][-2:] == ["solr", "ckan"]
    assert specs[-2].ready_url == f"{solr.url(ports.solr)}/admin/ping"
    assert (tmp_path / "solr" / "ckan" / "conf" / "schema.xml").read_bytes() == solr.ckan_schema().read_bytes()
    assert "solr" not in [spec.name for spec in services(tmp_path / "mltokens.toml", ports, "nginx", None, tmp_path)]
    ini = write_ini(tmp_path, "postgresql://unused", 5000, ISSUER, "pass", MODEL_API, solr.url(ports.solr))
    assert f"solr_url = {solr.url(ports.solr)}\n" in ini.read_text()


# -- demo/run.py as a user runs it (without CKAN, to keep it quick) ----------------------------


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: list[str]
    workdir: Path
    ports: dict[str, int]
    argv: list[str]
    token: str = ""

    def text(self) -> str:
        return "".join(self.output)


def _pump(process: subprocess.Popen[str], into: list[str]) -> None:
    for line in process.stdout or ():
        into.append(line)


@contextlib.contextmanager
def run_demo(workdir: Path) -> Iterator[Demo]:
    """`python -m demo.run --without-ckan` on free ports, its own workdir and database, in its
    own process group (as `make demo` in a terminal); killed and its database dropped at the end."""
    database = pg.fresh_name("mlt_demo_run")
    ports = {name: free_port() for name in ("issuer", "validator", "model-api", "gateway", "ckan")}
    argv = [
        sys.executable,
        "-m",
        "demo.run",
        "--without-ckan",
        "--workdir",
        str(workdir),
        "--database",
        database,
        *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
    ]
    env = {**os.environ, "MLTOKENS_DEMO_PG": pg.PG_BASE}
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    running = Demo(process, [], workdir, ports, argv)
    threading.Thread(target=_pump, args=(process, running.output), daemon=True).start()
    try:
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        pg.admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def wait_for(demo: Demo, pattern: str, timeout: float = 180) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, demo.text())):
        assert demo.process.poll() is None and time.monotonic() < deadline, demo.text()
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with run_demo(tmp_path_factory.mktemp("demo")) as running:
        running.token = wait_for(running, r"TOKEN=(\S+)").group(1)
        yield running


def assert_stopped_cleanly(demo: Demo) -> None:
    """Exit status 0, no traceback anywhere, nothing left listening or running."""
    children = _descendants(demo.process.pid)
    os.killpg(demo.process.pid, signal.SIGTERM)
    assert demo.process.wait(60) == 0, demo.text()
    time.sleep(0.2)  # the pump thread reads the last lines
    assert "stopping" in demo.text() and "Traceback" not in demo.text(), demo.text()
    for log in (demo.workdir / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
    assert all(who_listens(port) is None for port in demo.ports.values()), demo.ports
    deadline = time.monotonic() + 10  # a process signalled by the demo may take a moment to vanish
    while (left := [pid for pid in children if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left if _running(pid)]


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _predict(demo: Demo) -> requests.Response:
    return requests.post(
        f"http://127.0.0.1:{demo.ports['gateway']}/v1/models/sentiment/predict",
        timeout=10,
        headers={"Authorization": f"Bearer {demo.token}"},
        json={"text": "a good day"},
    )


def test_second_demo_refuses_busy_ports_and_leaves_the_first_intact(demo: Demo) -> None:
    assert _predict(demo).status_code == 200
    before = {p: p.read_bytes() for p in demo.workdir.rglob("*") if p.is_file()}
    env = {**os.environ, "MLTOKENS_DEMO_PG": pg.PG_BASE}
    second = subprocess.run(demo.argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    issuer_port = demo.ports["issuer"]
    assert f"port {issuer_port} (issuer) is in use by pid " in second.stderr, second.stderr
    assert f"port {demo.ports['gateway']} (gateway) is in use by pid " in second.stderr
    assert "mltokens" in second.stderr and "Traceback" not in second.stderr + second.stdout
    assert "starting" not in second.stdout  # it stopped before touching anything
    after = {p: p.read_bytes() for p in demo.workdir.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    for path, content in before.items():  # the first demo's logs may grow, never be rewritten
        assert after[path].startswith(content) if path.suffix == ".log" else after[path] == content, path
    assert _predict(demo).status_code == 200  # the first demo's token was not revoked


def test_sigterm_while_starting_stops_cleanly_and_leaves_no_service_behind(tmp_path: Path) -> None:
    """A signal while the database is prepared or a service is waited for used to end in a
    KeyboardInterrupt traceback, and could leave that service running."""
    with run_demo(tmp_path) as starting:
        wait_for(starting, "starting validator")
        assert_stopped_cleanly(starting)


def test_sigterm_to_the_process_group_stops_everything_without_a_traceback(demo: Demo) -> None:
    """Last in this module: stops the demo."""
    assert_stopped_cleanly(demo)


def _descendants(pid: int) -> list[int]:
    kids = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [p for kid in kids for p in (kid, *_descendants(kid))]
