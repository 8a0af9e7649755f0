"""`make demo`: the product on one machine, in the foreground; Ctrl-C stops everything.

First checks that every port it needs is free (a second `make demo` beside a running one
stops here, naming what holds the port, and changes nothing). Then prepares PostgreSQL
database `mltokens_demo` (created if missing, migrated, a signing key made if there is
none; CKAN's tables beside ours, with a demo sysadmin and user), then
starts, in order, each `ServiceSpec` of `services()`: the local issuer, the validator,
the demo model API, a gateway (nginx by default, or Envoy), Solr (CKAN's search index,
kept in .demo/solr) and CKAN with the plugin.
Every service gets a log file in .demo/logs/. When all are ready it creates a demo token
and prints the URLs, a curl command to try and the CKAN logins. Ctrl-C or SIGTERM stops
every service and exits 0.

To add a service, append a ServiceSpec (command + readiness URL) to the
list that `services()` returns; startup order is list order, shutdown the reverse.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from demo.ckan import CkanSite
from demo.ckan import prepare as ckan_prepare
from demo.ckan import publish as ckan_publish
from demo.ckan import spec as ckan_spec
from demo.ckan import welcome as ckan_welcome
from devstack import solr
from devstack.services import (
    GATEWAY_SPECS,
    ROOT,
    Running,
    ServiceSpec,
    issuer_spec,
    mltokens,
    model_api_spec,
    solr_spec,
    start,
    validator_spec,
    who_listens,
)

WORKDIR = ROOT / ".demo"
PG_BASE = os.environ.get("MLTOKENS_DEMO_PG", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "mltokens_demo"
CKAN_ONLY = ("ckan", "solr")


@dataclass(frozen=True)
class Ports:
    issuer: int = 8901
    validator: int = 8902
    model_api: int = 8903
    gateway: int = 8080
    ckan: int = 5000
    solr: int = 8983


def busy_ports(ports: Ports, with_ckan: bool) -> list[str]:
    """One line per port the demo needs that something already listens on."""
    wanted = {name: port for name, port in asdict(ports).items() if with_ckan or name not in CKAN_ONLY}
    return [
        f"port {port} ({name.replace('_', ' ')}) is in use by {holder}"
        for name, port in wanted.items()
        if (holder := who_listens(port))
    ]


def ensure_database(name: str = DATABASE) -> str:
    """Create database `name` if it does not exist; returns its URL."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(f"{PG_BASE}/postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return f"{PG_BASE}/{name}"


def write_config(db_url: str, ports: Ports, workdir: Path = WORKDIR) -> Path:
    """.demo/mltokens.toml; the key passphrase is made once and kept in .demo/passphrase."""
    workdir.mkdir(exist_ok=True)
    secret_file = workdir / "passphrase"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(24))
        secret_file.chmod(0o600)
    config = workdir / "mltokens.toml"
    config.write_text(
        "[mltokens]\n"
        f'database_url = "{db_url}"\n'
        f'issuer_url = "http://127.0.0.1:{ports.issuer}"\n'
        f'key_passphrase = "{secret_file.read_text().strip()}"\n'
        'default_ttl = "1d"\n\n'
        "[validator]\n"
        f'policy_file = "{ROOT / "devstack" / "policy.yaml"}"\n'
        f"port = {ports.validator}\n"
    )
    return config


def cli(config: Path, *args: str) -> str:
    done = subprocess.run(mltokens(config, *args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"mltokens {' '.join(args)} failed:\n{done.stderr or done.stdout}")
    return done.stdout


def services(
    config: Path, ports: Ports, gateway: str, site: CkanSite | None, workdir: Path = WORKDIR
) -> list[ServiceSpec]:
    """What the demo runs, in start order."""
    gateway_spec = GATEWAY_SPECS[gateway]
    specs = [
        issuer_spec(config, ports.issuer),
        validator_spec(config, ports.validator),
        model_api_spec(ports.model_api),
        gateway_spec(workdir, ports.gateway, ports.validator, ports.model_api),
    ]
    if site:
        specs += [solr_spec(workdir / "solr", ports.solr, workdir / "logs"), ckan_spec(site)]
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the mltokens demo (Ctrl-C stops it).")
    parser.add_argument("--gateway", choices=sorted(GATEWAY_SPECS), default="nginx")
    parser.add_argument("--without-ckan", action="store_true", help="Only the token service side (faster).")
    for name, default in asdict(Ports()).items():
        parser.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=default, dest=f"{name}_port")
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="Config, keys and logs (default: .demo).")
    parser.add_argument("--database", default=DATABASE, help=f"PostgreSQL database (default: {DATABASE}).")
    args = parser.parse_args()
    ports = Ports(**{name: getattr(args, f"{name}_port") for name in asdict(Ports())})

    # Before anything else: a second demo beside a running one must not touch the first's
    # token, config or logs.
    if busy := busy_ports(ports, with_ckan=not args.without_ckan):
        print("\n".join(busy), file=sys.stderr)
        raise SystemExit("Is another demo running? Stop it, or give other ports (--gateway-port …, see --help).")

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    running: list[Running] = []
    try:
        run(args, ports, running)
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        for r in reversed(running):
            r.stop()


def run(args: argparse.Namespace, ports: Ports, running: list[Running]) -> None:
    """Prepare, start every service (appended to `running`), then wait until one exits."""
    workdir: Path = args.workdir
    db_url = ensure_database(args.database)
    config = write_config(db_url, ports, workdir)
    cli(config, "db", "upgrade")
    if "no signing keys" in cli(config, "keys", "list"):
        cli(config, "keys", "rotate")
    site = None
    if not args.without_ckan:
        print("preparing CKAN (its tables beside ours, demo accounts) …", flush=True)
        site = ckan_prepare(
            db_url,
            issuer_url=f"http://127.0.0.1:{ports.issuer}",
            passphrase=(workdir / "passphrase").read_text().strip(),
            model_api_url=f"http://127.0.0.1:{ports.gateway}/v1/models/sentiment/predict",
            solr_url=solr.url(ports.solr),
            port=ports.ckan,
            workdir=workdir,
        )

    for spec in services(config, ports, args.gateway, site, workdir):
        print(f"starting {spec.name} …", flush=True)
        running.append(start(spec, workdir / "logs", timeout=90))
    if site:
        print("publishing the demo models as CKAN datasets …", flush=True)
        ckan_publish(site)
    # One demo token at a time: the owner limits (active tokens, creations an hour) hold across restarts.
    cli(config, "token", "revoke-all", "demo", "--reason", "a new demo run")
    token = json.loads(
        cli(
            config,
            "token",
            "create",
            "--owner-id",
            "demo",
            "--owner-name",
            "demo",
            "--name",
            f"demo-{int(time.time())}",
            "--role",
            "model:sentiment:predict",
            "--ttl",
            "12h",
            "--json",
        )
    )
    print_welcome(ports, token, workdir)
    if site:
        print("\n" + ckan_welcome(site), flush=True)
    while all(r.process.poll() is None for r in running):
        time.sleep(0.5)
    dead = [r for r in running if r.process.poll() is not None]
    print(f"\n{dead[0].spec.name} exited; its log ends:\n{dead[0].log_tail()}", file=sys.stderr)
    raise SystemExit(1)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM stop the demo and every child. Later signals are ignored while it
    stops (each child still gets SIGTERM, then SIGKILL), so a second Ctrl-C or a SIGTERM sent
    to the whole process group cannot break the shutdown with a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def print_welcome(ports: Ports, token: dict[str, object], workdir: Path = WORKDIR) -> None:
    gw = f"http://127.0.0.1:{ports.gateway}"
    print(
        f"""
mltokens demo is up (logs in {workdir / "logs"}):
  gateway (model API behind the validator)  {gw}
  validator  http://127.0.0.1:{ports.validator}   (/readyz, /metrics)
  issuer     http://127.0.0.1:{ports.issuer}/.well-known/openid-configuration
  model API  http://127.0.0.1:{ports.model_api}   (direct, no auth: for comparison only)

A demo token (id {token["id"]}, role model:sentiment:predict, 12 hours):

  TOKEN={token["token"]}
  curl -s -X POST {gw}/v1/models/sentiment/predict -H "Authorization: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"text": "what a great day"}}'

The same token on a route it lacks a role for (403):
  curl -si -X POST {gw}/v1/models/sentiment/train -H "Authorization: Bearer $TOKEN" -d '{{}}'

Revoke it, and the next call is a 401:
  .venv/bin/mltokens --config {workdir / "mltokens.toml"} token revoke {token["id"]}

Ctrl-C stops everything.""",
        flush=True,
    )


if __name__ == "__main__":
    main()
