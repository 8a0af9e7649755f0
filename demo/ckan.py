"""CKAN with the mltokens plugin for `make demo`: config, database, demo users, how to run it.

The launcher calls, with the demo's token-store database and local-issuer settings:

    site = prepare(db_url, issuer_url=..., passphrase=..., model_api_url=..., solr_url=...)
    running = start(spec(site), log_dir)      # devstack.services.start, after Solr's
    print(welcome(site))

`prepare` writes .demo/ckan.ini, runs `ckan db init` and `ckan mltokens init` (CKAN's
tables in schema public, the token tables in schema mltokens of the same database) and
makes a demo sysadmin and a demo user whose passwords are kept in .demo/ckan-users.json.
Once Solr runs, `publish(site)` publishes the demo models as datasets of the organization
`demo-models`: `sentiment-model` (public) and `vision-model` (private), with `demo-user` a
member of the organization (so it may put `model:<id>:predict` of both on a token, and
`train` of neither). Everything is idempotent. CKAN searches and indexes datasets in the
Solr at `solr_url` (the demo's, devstack/solr, started before CKAN); `ckan db init` and the
accounts do not need it running, publishing does.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.services import BIN, ROOT, ServiceSpec

WORKDIR = ROOT / ".demo"
SYSADMIN = "demo-admin"
USER = "demo-user"
REDIS_URL = "redis://127.0.0.1:6379/13"
ORGANIZATION = "demo-models"
# name, title, model id, private: the demo model API's two models (devstack/model_api.py)
MODELS = (
    ("sentiment-model", "Sentiment model (lexicon)", "sentiment", False),
    ("vision-model", "Vision model (brightness)", "vision", True),
)


@dataclass(frozen=True)
class CkanSite:
    """A prepared demo CKAN: its config file, database, address and demo accounts (name → password)."""

    ini: Path
    db_url: str
    url: str
    accounts: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        """CKAN lets CKAN_SQLALCHEMY_URL override the ini: pin it to the demo's database."""
        return {"CKAN_SQLALCHEMY_URL": self.db_url}


def _secret(path: Path, make: str) -> str:
    """A secret kept in a private file, made on first use."""
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def write_ini(
    workdir: Path, db_url: str, port: int, issuer_url: str, passphrase: str, model_api_url: str, solr_url: str
) -> Path:
    """.demo/ckan.ini: CKAN on 127.0.0.1:`port` with only the mltokens plugin, on the local issuer."""
    secret_key = _secret(workdir / "ckan-secret", secrets.token_urlsafe(32))
    ini = workdir / "ckan.ini"
    ini.write_text(f"""# Written by demo/ckan.py for `make demo`; rewritten at every start.
[app:main]
use = egg:ckan
SECRET_KEY = {secret_key}
sqlalchemy.url = {db_url}
ckan.redis.url = {REDIS_URL}
ckan.site_url = http://127.0.0.1:{port}
ckan.site_id = mltokens-demo
ckan.site_title = mltokens demo
solr_url = {solr_url}
ckan.plugins = mltokens
ckan.auth.route_after_login = mltokens.mine
ckan.auth.create_user_via_web = false
ckan.gravatar_default = disabled
ckan.webassets.path = {workdir / "webassets"}
ckan.storage_path = {workdir / "ckan-storage"}

ckanext.mltokens.issuer = local
ckanext.mltokens.issuer_url = {issuer_url}
ckanext.mltokens.key_passphrase = {passphrase}
ckanext.mltokens.model_api_url = {model_api_url}

# ckan, ckanext and token_service are named so that their modules' loggers, made before CKAN reads this
# file, stay enabled (fileConfig disables every existing logger it does not name or parent).
[loggers]
keys = root, ckan, ckanext, token_service

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_ckan]
level = WARNING
handlers =
qualname = ckan

[logger_ckanext]
level = WARNING
handlers =
qualname = ckanext

[logger_token_service]
level = WARNING
handlers =
qualname = token_service

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s
""")
    return ini


def _run(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, **env})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} … failed:\n{done.stderr[-3000:] or done.stdout[-3000:]}")
    return done.stdout


def prepare(
    db_url: str,
    *,
    issuer_url: str,
    passphrase: str,
    model_api_url: str,
    solr_url: str,
    port: int = 5000,
    workdir: Path = WORKDIR,
) -> CkanSite:
    """Config, CKAN's tables and ours, a signing key if none, and the demo accounts."""
    workdir.mkdir(parents=True, exist_ok=True)
    ini = write_ini(workdir, db_url, port, issuer_url, passphrase, model_api_url, solr_url)
    accounts_file = workdir / "ckan-users.json"
    fresh = json.dumps({name: secrets.token_urlsafe(12) for name in (SYSADMIN, USER)})
    site = CkanSite(ini, db_url, f"http://127.0.0.1:{port}", json.loads(_secret(accounts_file, fresh)))
    ckan = str(BIN / "ckan")
    _run(site.env, ckan, "-c", str(ini), "db", "init")
    _run(site.env, ckan, "-c", str(ini), "mltokens", "init")
    _run(site.env, sys.executable, "-m", "demo.ckan", "accounts", str(ini), str(accounts_file))
    return site


def spec(site: CkanSite) -> ServiceSpec:
    """`ckan run` (single process, threaded, no reloader); ready when the action API answers."""
    port = site.url.rsplit(":", 1)[1]
    return ServiceSpec(
        "ckan",
        [
            str(BIN / "ckan"),
            "-c",
            str(site.ini),
            "run",
            "-H",
            "127.0.0.1",
            "-p",
            port,
            "--disable-reloader",
            "--threaded",
        ],
        f"{site.url}/api/3/action/status_show",
        env=site.env,
    )


def publish(site: CkanSite) -> None:
    """The demo models as datasets (needs the demo's Solr running: datasets are indexed)."""
    _run(site.env, sys.executable, "-m", "demo.ckan", "models", str(site.ini))


def welcome(site: CkanSite) -> str:
    return f"""CKAN with the ML API tokens plugin  {site.url}/user/login
  sysadmin  {SYSADMIN} / {site.accounts[SYSADMIN]}   (all tokens: {site.url}/ckan-admin/ml-tokens)
  user      {USER} / {site.accounts[USER]}   (after login: your ML API tokens tab, {site.url}/ml-tokens)
  models    {site.url}/organization/{ORGANIZATION}: sentiment (public), vision (private; {USER} is a member)
  Create a token there, then call the model API through the gateway with the curl command it shows."""


def _ensure_accounts(ini: str, accounts_file: str) -> None:
    """Inside CKAN: create or update the demo accounts with the kept passwords."""
    from ckan.cli import load_config
    from ckan.config.middleware import make_app

    make_app(load_config(ini))
    import ckan.model as model
    from ckan.logic import get_action

    context = {"ignore_auth": True, "user": ""}
    for name, password in json.loads(Path(accounts_file).read_text()).items():
        user = model.User.get(name)
        if user is None:
            get_action("user_create")(
                dict(context),
                {
                    "name": name,
                    "email": f"{name}@example.org",
                    "password": password,
                    "fullname": name.replace("-", " ").title(),
                },
            )
            user = model.User.get(name)
        user.password = password  # hashed by the model
        user.state = model.State.ACTIVE
        user.sysadmin = name == SYSADMIN
        model.Session.commit()


def _ensure_models(ini: str) -> None:
    """Inside CKAN: the demo organization, its model datasets and demo-user's membership, as MODELS says."""
    from ckan.cli import load_config
    from ckan.config.middleware import make_app

    make_app(load_config(ini))
    import ckan.model as model
    from ckan.logic import get_action

    def act(action: str, **data: object) -> dict:
        return get_action(action)({"ignore_auth": True, "user": SYSADMIN}, data)

    org = model.Group.get(ORGANIZATION)
    if org is None or org.state != model.State.ACTIVE:
        if org is not None:
            act("group_purge", id=org.id)
        act("organization_create", name=ORGANIZATION, title="Demo models")
    act("organization_member_create", id=ORGANIZATION, username=USER, role="member")
    for name, title, model_id, private in MODELS:
        fields = {
            "title": title,
            "owner_org": ORGANIZATION,
            "private": private,
            "notes": f"The demo model API's `{model_id}` model: POST /v1/models/{model_id}/predict or /train.",
            "extras": [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": "predict, train"}],
        }
        package = model.Package.get(name)
        if package is not None and package.state != model.State.ACTIVE:
            act("dataset_purge", id=package.id)
            package = None
        if package is None:
            act("package_create", name=name, **fields)
        else:
            act("package_patch", id=package.id, **fields)


if __name__ == "__main__" and sys.argv[1:2] == ["accounts"]:
    _ensure_accounts(*sys.argv[2:4])
elif __name__ == "__main__" and sys.argv[1:2] == ["models"]:
    _ensure_models(sys.argv[2])
