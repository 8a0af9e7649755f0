"""deploy/k8s: every object valid for Kubernetes, and the objects agree with each other.

- Built-in kinds: the Kubernetes OpenAPI schemas bundled in PyPI `kubernetes-validate`,
  strict (an unknown field fails, as with `kubectl apply --validate=strict`).
- Istio `AuthorizationPolicy`/`EnvoyFilter` and Emissary `AuthService`/`Mapping`/`Module`: the CRDs' own
  `openAPIV3Schema`, vendored in schemas/ (SOURCES.md), with unknown fields rejected.
  CEL rules (`x-kubernetes-validations`) are not evaluated.
- Istio mesh config (Helm values of istiod): a JSON schema we wrote from Istio's
  MeshConfig proto (schemas/istio-meshconfig-extauthz.json).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DOCKER, K8S, SCHEMAS, cli_accepts, k8s_objects, load_yaml_documents
from token_service.validator.contracts import ENVOY_PREFIX
from token_service.validator.decision import IDENTITY_HEADERS

K8S_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("security.istio.io/v1", "AuthorizationPolicy"): "istio-authorizationpolicy-v1.json",
    ("getambassador.io/v3alpha1", "AuthService"): "emissary-authservice-v3alpha1.json",
    ("getambassador.io/v3alpha1", "Mapping"): "emissary-mapping-v3alpha1.json",
    ("getambassador.io/v3alpha1", "Module"): "emissary-module-v3alpha1.json",
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): "istio-envoyfilter-v1alpha3.json",
}
OBJECTS = k8s_objects()


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, obj = item
    return f"{path.relative_to(K8S)}:{obj['kind']}/{obj['metadata']['name']}"


def find(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    for _, obj in OBJECTS:
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
            return obj
    raise AssertionError(f"no {kind} {namespace}/{name} in deploy/k8s")


def structural_to_jsonschema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as JSON Schema, unknown fields rejected."""
    if isinstance(node, list):
        return [structural_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: structural_to_jsonschema(v)
        for k, v in node.items()
        if k not in ("x-kubernetes-validations", "description", "nullable", "format")
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **{k: v for k, v in out.items() if k != "type"}}
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    elif (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    vendored = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    assert f"{vendored['group']}/{vendored['version']}" == api_version and vendored["kind"] == kind
    schema = structural_to_jsonschema(vendored["openAPIV3Schema"])
    # The API server accepts these at the root of every object, declared or not.
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
    }
    return jsonschema.Draft7Validator(schema)


def validate(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        errors = sorted(crd_validator(*key).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            raise AssertionError("; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_manifests_found() -> None:
    kinds = {obj["kind"] for _, obj in OBJECTS}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "AuthorizationPolicy",
        "AuthService",
        "CronJob",
        "Job",
        "EnvoyFilter",
        "Module",
    } <= kinds


@pytest.mark.parametrize("item", OBJECTS, ids=_id)
def test_object_is_valid(item: tuple[Path, dict[str, Any]]) -> None:
    validate(item[1])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
        lambda d: d["spec"].update(replicas="two"),
    ],
    ids=["missing-required", "unknown-field", "wrong-type"],
)
def test_kubernetes_check_can_fail(mutate: Any) -> None:
    broken = copy.deepcopy(find("Deployment", "mltokens-validator"))
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


@pytest.mark.parametrize(
    "api_version,kind,name,mutate",
    [
        ("security.istio.io/v1", "AuthorizationPolicy", "model-api-mltokens", lambda s: s.update(action="CUSTOMISED")),
        ("security.istio.io/v1", "AuthorizationPolicy", "model-api-mltokens", lambda s: s.update(providers={})),
        ("getambassador.io/v3alpha1", "AuthService", "mltokens", lambda s: s.update(proto="grpcs")),
        ("getambassador.io/v3alpha1", "AuthService", "mltokens", lambda s: s.update(timeoutMs=5)),
    ],
    ids=["istio-bad-action", "istio-unknown-field", "emissary-bad-proto", "emissary-unknown-field"],
)
def test_crd_check_can_fail(api_version: str, kind: str, name: str, mutate: Any) -> None:
    broken = copy.deepcopy(find(kind, name))
    assert broken["apiVersion"] == api_version
    mutate(broken["spec"])
    with pytest.raises(AssertionError):
        validate(broken)


# -- the Istio wiring ----------------------------------------------------------------


def mesh_providers() -> list[dict[str, Any]]:
    values = yaml.safe_load((K8S / "istio" / "istiod-values.yaml").read_text())
    schema = json.loads((SCHEMAS / "istio-meshconfig-extauthz.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(values["meshConfig"])
    return values["meshConfig"]["extensionProviders"]


def test_istio_mesh_config_valid_and_points_at_the_validator_service() -> None:
    (provider,) = [p for p in mesh_providers() if p["name"] == "mltokens"]
    http = provider["envoyExtAuthzHttp"]
    service = find("Service", "mltokens-validator", "mltokens")
    name, namespace = http["service"].split(".")[:2]
    assert (name, namespace) == (service["metadata"]["name"], service["metadata"]["namespace"])
    assert http["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert http["pathPrefix"] == ENVOY_PREFIX
    assert http["failOpen"] is False
    assert http["headersToUpstreamOnAllow"] == list(IDENTITY_HEADERS)
    assert "www-authenticate" in http["headersToDownstreamOnDeny"]


def test_istio_mesh_schema_rejects_unknown_fields() -> None:
    schema = json.loads((SCHEMAS / "istio-meshconfig-extauthz.json").read_text())
    bad = {"extensionProviders": [{"name": "x", "envoyExtAuthzHttp": {"service": "s", "port": 1, "failopen": True}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_istio_policy_uses_the_provider_on_the_model_api() -> None:
    policy = find("AuthorizationPolicy", "model-api-mltokens")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] in [p["name"] for p in mesh_providers()]
    model_api = find("Deployment", "model-api", policy["metadata"]["namespace"])
    labels = model_api["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    namespace = find("Namespace", policy["metadata"]["namespace"])
    assert namespace["metadata"]["labels"].get("istio-injection") == "enabled"


# -- Ambassador / Emissary -----------------------------------------------------------


def test_ambassador_authservice_points_at_the_validator() -> None:
    auth = find("AuthService", "mltokens")["spec"]
    host, port = auth["auth_service"].rsplit(":", 1)
    service = find("Service", "mltokens-validator", "mltokens")
    assert host.split(".")[:2] == [service["metadata"]["name"], service["metadata"]["namespace"]]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert auth["failure_mode_allow"] is False
    assert auth["path_prefix"] == ENVOY_PREFIX
    assert auth["allowed_authorization_headers"][: len(IDENTITY_HEADERS)] == list(IDENTITY_HEADERS)
    mapping = find("Mapping", "model-api")["spec"]
    assert mapping["service"].split(":")[0].split(".")[:2] == ["model-api", "models"]
    assert mapping.get("rewrite") == mapping["prefix"], "the validator must see the model API's own paths"


# -- objects that refer to each other -------------------------------------------------


def pod_specs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    specs = []
    for _, obj in OBJECTS:
        if obj["kind"] in ("Deployment", "Job"):
            specs.append((obj, obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "CronJob":
            specs.append((obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("owner,spec", pod_specs(), ids=lambda v: v["metadata"]["name"] if "metadata" in v else "")
def test_pods_run_restricted(owner: dict[str, Any], spec: dict[str, Any]) -> None:
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in spec.get("initContainers", []) + spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= container["resources"].keys(), container["name"]


@pytest.mark.parametrize("owner,spec", pod_specs(), ids=lambda v: v["metadata"]["name"] if "metadata" in v else "")
def test_references_resolve(owner: dict[str, Any], spec: dict[str, Any]) -> None:
    namespace = owner["metadata"]["namespace"]
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            find("ConfigMap", volume["configMap"]["name"], namespace)
    for container in spec.get("initContainers", []) + spec["containers"]:
        for source in container.get("envFrom", []):
            find("ConfigMap", source["configMapRef"]["name"], namespace)
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])}
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in ports


def test_services_hpa_pdb_select_their_deployments() -> None:
    for _, obj in OBJECTS:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] == "Service":
            pods = [
                d
                for _, d in OBJECTS
                if d["kind"] == "Deployment"
                and d["metadata"]["namespace"] == namespace
                and obj["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert pods, f"Service {obj['metadata']['name']} selects no Deployment"
            ports = {p["name"] for d in pods for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in obj["spec"]["ports"]} <= ports
        elif obj["kind"] == "HorizontalPodAutoscaler":
            find(obj["spec"]["scaleTargetRef"]["kind"], obj["spec"]["scaleTargetRef"]["name"], namespace)
        elif obj["kind"] == "PodDisruptionBudget":
            target = find("Deployment", obj["metadata"]["name"], namespace)
            assert (
                obj["spec"]["selector"]["matchLabels"].items()
                <= target["spec"]["template"]["metadata"]["labels"].items()
            )
            hpa = find("HorizontalPodAutoscaler", obj["metadata"]["name"], namespace)
            assert obj["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every drain"


def test_validator_deployment_matches_its_settings() -> None:
    from token_service.validator.settings import ValidatorSettings

    config = find("ConfigMap", "mltokens-validator", "mltokens")["data"]
    deployment = find("Deployment", "mltokens-validator", "mltokens")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = dict(config)
    env.update({e["name"]: "postgresql://u@db/mltokens" for e in container["env"]})
    policy_mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["policy"]
    assert env["MLTOKENS_VALIDATOR_POLICY_FILE"].startswith(policy_mount + "/")
    policy_map = find("ConfigMap", "mltokens-validator-policy", "mltokens")
    assert Path(env["MLTOKENS_VALIDATOR_POLICY_FILE"]).name in policy_map["data"]
    settings = ValidatorSettings.load(env=env)  # unknown or malformed variables raise here
    if settings.workers > 1:  # a probe reaches one worker (docs/validator.md)
        assert container["readinessProbe"]["successThreshold"] > settings.workers
    assert container["ports"][0]["containerPort"] == settings.port
    assert settings.host == "0.0.0.0"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(settings.port)


def test_container_commands_exist_in_the_cli() -> None:
    """Jobs and CronJobs run `mltokens ARGS` (the image's entrypoint): the CLI must accept them."""
    checked = 0
    for _owner, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["image"].startswith("mltokens-validator:") and "args" in container:
                cli_accepts(container["args"])
                checked += 1
    assert checked >= 2


def test_sync_cronjob_runs_sync_often_with_valid_keycloak_settings() -> None:
    """issue 12: nothing ran `mltokens sync`, so disabled Keycloak users kept working tokens."""
    from token_service.config import Settings

    cronjob = find("CronJob", "mltokens-sync", "mltokens")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["sync"] and container["image"].endswith("-keycloak")
    env = dict(find("ConfigMap", container["envFrom"][0]["configMapRef"]["name"], "mltokens")["data"])
    env.update(
        {e["name"]: "postgresql://u@db/mltokens" if "DATABASE" in e["name"] else "secret" for e in container["env"]}
    )
    settings = Settings.load(env=env)  # unknown or malformed settings raise here
    assert settings.issuer == "keycloak" and settings.keycloak_admin_client_secret == "secret"
    minute, *rest = cronjob["spec"]["schedule"].split()
    assert rest == ["*"] * 4 and minute.startswith("*/") and int(minute[2:]) <= 15, (
        "every few minutes: a disabled owner's tokens work until the next run"
    )
    assert (
        env["MLTOKENS_ISSUER_URL"] == find("ConfigMap", "mltokens-validator", "mltokens")["data"]["MLTOKENS_ISSUER_URL"]
    )


def test_the_validator_trusts_the_iss_of_the_keycloak_issuer_and_reads_keys_where_it_calls_keycloak() -> None:
    """issue 13: with issuer = keycloak the trusted issuer is the realm, not the local default."""
    from token_service.config import Settings
    from token_service.validator.jwks import discovery_url
    from token_service.validator.settings import ValidatorSettings

    core = Settings.load(
        env=dict(find("ConfigMap", "mltokens-keycloak", "mltokens")["data"])
        | {"MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET": "secret"}
    )
    validator = ValidatorSettings.load(
        env=dict(find("ConfigMap", "mltokens-validator", "mltokens")["data"])
        | {"MLTOKENS_DATABASE_URL": "postgresql://u@db/mltokens"}
    )
    assert core.issuer_url in validator.issuers
    keys_at = validator.discovery.get(core.issuer_url, discovery_url(core.issuer_url))
    assert keys_at == f"{core.keycloak_realm_url}/.well-known/openid-configuration"
    # the same ConfigMap without MLTOKENS_ISSUER_URL: the realm is still the issuer
    bare = {
        k: v
        for k, v in find("ConfigMap", "mltokens-keycloak", "mltokens")["data"].items()
        if k != "MLTOKENS_ISSUER_URL"
    }
    assert Settings.load(env=bare | {"MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET": "s"}).issuer_url == core.issuer_url


def test_grants_configmap_matches_compose_sql() -> None:
    data = find("ConfigMap", "mltokens-validator-grants", "mltokens")["data"]
    assert data["validator-grants.sql"] == (DOCKER / "postgres" / "validator-grants.sql").read_text()


def test_policy_configmap_matches_compose_policy() -> None:
    data = find("ConfigMap", "mltokens-validator-policy", "mltokens")["data"]
    assert data["policy.yaml"] == (DOCKER / "validator" / "policy.yaml").read_text()


def test_gpu_model_api() -> None:
    deployment = find("Deployment", "model-api", "models")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_every_yaml_file_parses() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        assert load_yaml_documents(path), path


def test_network_policy_admits_the_gateway_to_the_model_api_port() -> None:
    policy = find("NetworkPolicy", "model-api-from-emissary-only", "models")
    model_api = find("Deployment", "model-api", "models")
    labels = model_api["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ports = [p["containerPort"] for c in model_api["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ports


def test_notify_cronjob_runs_the_plugins_notify_with_valid_settings() -> None:
    """issue 15: expiry warnings go out from `ckan mltokens notify`, run often, in the CKAN image."""
    from ckanext.mltokens.cli import mltokens

    from token_service.config import Settings
    from token_service.settings_schema import parse_duration, parse_list

    cronjob = find("CronJob", "mltokens-notify", "mltokens")
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"].startswith("mltokens-ckan:")
    program, group, command = container["args"]
    assert (program, group) == ("ckan", "mltokens") and command in mltokens.commands
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    minute, *rest = cronjob["spec"]["schedule"].split()
    assert rest == ["*"] * 4 and minute.startswith("*/") and int(minute[2:]) <= 60
    env = dict(find("ConfigMap", container["envFrom"][0]["configMapRef"]["name"], "mltokens")["data"])
    env.update({e["name"]: "postgresql://u@db/x" if "URL" in e["name"] else "secret" for e in container["env"]})
    assert env["CKAN_DB_UPGRADE"] == "false" and "CKAN_DB_UPGRADE" in (DOCKER / "ckan" / "entrypoint.sh").read_text()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["CKAN_INI"]).parent) in mounts, "ckan.ini is written on a read-only root filesystem"
    assert env["CKAN_SMTP_SERVER"] and env["CKAN_SMTP_MAIL_FROM"] and env["CKAN_SITE_URL"].startswith("https://")
    prefix = "CKANEXT__MLTOKENS__"
    options = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    declared = {f.name for f in dataclasses.fields(Settings)} | {"expiry_notices"}
    assert options.keys() <= declared
    Settings.from_mapping({k: v for k, v in options.items() if k != "expiry_notices"})  # raises when wrong
    assert [parse_duration(v) for v in parse_list(options["expiry_notices"].split(), "expiry_notices")]
