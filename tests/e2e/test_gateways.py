"""End to end through real gateways: nginx (auth_request), Envoy (ext_authz HTTP), Caddy
(forward_auth) and Traefik (ForwardAuth); Envoy programmed as istiod and Emissary would
program it from deploy/k8s/ (tests/support/mesh.py); and `mltokens proxy`, the validator
inline with no gateway.

One stack per gateway (issuer, validator, demo model API, gateway as real processes);
each test is a handful of HTTP requests.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.services import listeners, socket_inodes
from tests.support import pg
from tests.support.stack import Stack
from tests.support.wsgi_echo import cgi_key

PREDICT = "/v1/models/sentiment/predict"
SPOOFED = {
    "X-Auth-Subject": "mallory",
    "X-Auth-Roles": "model:sentiment:train",
    "X-Auth-Token-Id": "forged",
    "X-Auth-Owner-Kind": "organization",
}


GATEWAYS = [  # with `--dist loadgroup`, each gateway's tests share one worker
    pytest.param(g, marks=pytest.mark.xdist_group(f"gateway-{g}"))
    for g in ("nginx", "envoy", "caddy", "traefik", "istio", "emissary", "proxy")
]
IDENTITY = (
    "X-Auth-Subject",
    "X-Auth-Owner",
    "X-Auth-Owner-Name",
    "X-Auth-Owner-Kind",
    "X-Auth-Token-Id",
    "X-Auth-Roles",
    "X-Auth-Scopes",
    "X-Auth-Issuer",
)
# Every character besides letters, digits and `-` that HTTP allows in a header name: CGI-style
# backends (WSGI servers, PHP, Apache) turn each into `_`, so each builds an alias of a header.
ALIAS_CHARS = "_.!#$%&'*+^`|~"


@pytest.fixture(scope="module", params=GATEWAYS)
def stack(
    request: pytest.FixtureRequest, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with pg.database(template=migrated_template) as db_url:
        workdir: Path = tmp_path_factory.mktemp(request.param)
        with Stack(db_url, workdir, gateway=request.param) as s:
            yield s


@pytest.fixture(scope="module", params=GATEWAYS)
def wsgi_stack(
    request: pytest.FixtureRequest, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The same gateway in front of a WSGI upstream (tests/support/wsgi_echo.py) that shows its environ."""
    with pg.database(template=migrated_template) as db_url:
        workdir: Path = tmp_path_factory.mktemp(f"{request.param}-wsgi")
        with Stack(db_url, workdir, gateway=request.param, upstream="wsgi") as s:
            yield s


def look_alikes(name: str) -> list[str]:
    """Names a CGI-style backend reads as `name`: each alias character as separator, mixed forms, odd case."""
    words = name.split("-")
    names = [c.join(words) for c in ALIAS_CHARS]
    names += [
        "_".join(words).lower(),
        "-".join(words[:-1]) + "_" + words[-1],
        words[0] + "_" + "-".join(words[1:]),
        ".".join(words).upper(),
    ]
    return names


def identity_environ(environ: dict[str, str]) -> dict[str, str]:
    """The environ entries a CGI-style backend would read as an identity header."""
    wanted = {cgi_key("HTTP_" + h) for h in IDENTITY}
    return {k: v for k, v in environ.items() if cgi_key(k) in wanted}


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (nginx's workers, for one)."""
    kids = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [pid, *(p for kid in kids for p in process_tree(kid))]


def test_every_service_listens_on_loopback_only(stack: Stack) -> None:
    """The demo's configs (devstack/gateways/) bind 127.0.0.1: a site address such as Caddy's
    `http://127.0.0.1:8080` only matches requests, it does not limit where Caddy listens."""
    for running in stack.running:
        inodes = set().union(*(socket_inodes(pid) for pid in process_tree(running.process.pid)))
        bound = {(str(entry.address), entry.port) for entry in listeners() if entry.inode in inodes}
        assert bound, running.spec.name
        assert all(ipaddress.ip_address(address).is_loopback for address, _ in bound), (running.spec.name, bound)


def test_good_token_reaches_the_model_with_identity_and_no_spoofed_headers(stack: Stack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    r = stack.call(PREDICT, token, SPOOFED)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"]["label"] == "positive"
    caller = body["caller"]
    assert caller["x-auth-subject"] == "u-alice" and caller["x-auth-owner-name"] == "alice"
    assert caller["x-auth-owner-kind"] == "user"  # not the spoofed "organization"
    assert caller["x-auth-token-id"] == token_id
    assert caller["x-auth-roles"] == "model:sentiment:predict"


def test_revoked_token_stops_at_the_gateway(stack: Stack) -> None:
    token, token_id = stack.create_token(["model:sentiment:predict"])
    assert stack.call(PREDICT, token).status_code == 200
    stack.revoke(token_id)
    deadline = time.monotonic() + 2
    while (r := stack.call(PREDICT, token)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.status_code == 401
    assert "model" not in r.text
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens", error="invalid_token"'


def test_wrong_role_is_403_and_never_reaches_the_model(stack: Stack) -> None:
    token, _ = stack.create_token(["model:vision:predict"])
    r = stack.call("/v1/models/sentiment/train", token, SPOOFED)
    assert r.status_code == 403 and "caller" not in r.text
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens", error="insufficient_scope"'


def test_missing_and_garbage_tokens_are_401(stack: Stack) -> None:
    r = stack.call(PREDICT, None, SPOOFED)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="mltokens"'
    assert stack.call(PREDICT, "abc.def.ghi").status_code == 401


def test_path_tricks_are_refused(stack: Stack) -> None:
    token, _ = stack.create_token(["model:sentiment:predict"])
    for path in (
        "/v1/models/sentiment/predict/../train",
        "/v1/models/sentiment/%2e%2e/vision/train",
        "/v1/models/sentiment%2Fx/predict",
    ):
        assert stack.call(path, token).status_code in (400, 403, 404), path


def test_anonymous_health_check_passes_without_a_token(stack: Stack) -> None:
    if stack.gateway == "emissary":
        pytest.skip("deploy/k8s/ambassador maps only /v1/models/: probes reach the model API directly")
    r = stack.call("/healthz", None, SPOOFED, method="GET")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert not any(r.json()["caller"].values()), r.json()["caller"]  # spoofed identity removed


def test_oversized_authorization_header_is_refused_and_the_stack_survives(stack: Stack) -> None:
    r = stack.call(PREDICT, "a" * 65536)
    assert r.status_code in (400, 401, 413, 431)
    token, _ = stack.create_token(["model:sentiment:predict"])
    assert stack.call(PREDICT, token).status_code == 200


@pytest.mark.parametrize("identity", IDENTITY)
def test_look_alike_identity_headers_never_reach_a_wsgi_upstream(wsgi_stack: Stack, identity: str) -> None:
    """`X_Auth_Roles`, `X.Auth.Roles`, … are other header names to the gateway, but one variable to a WSGI app."""
    token, token_id = wsgi_stack.create_token(["model:sentiment:predict"])
    expected = {
        "X-Auth-Subject": "u-alice",
        "X-Auth-Owner-Name": "alice",
        "X-Auth-Owner-Kind": "user",
        "X-Auth-Token-Id": token_id,
        "X-Auth-Roles": "model:sentiment:predict",
    }
    odd_case = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(identity))
    for name in [*look_alikes(identity), odd_case]:
        r = wsgi_stack.call(PREDICT, token, {name: "spoofed"})
        if r.status_code == 400:  # refused by the gateway: it never reached the upstream
            assert "HTTP_" not in r.text, (name, r.text)
            continue
        assert r.status_code == 200, (name, r.status_code, r.text)
        seen = identity_environ(r.json())
        assert not any("spoofed" in v for v in seen.values()), (name, seen)
        if identity in expected:
            assert seen.get(cgi_key("HTTP_" + identity)) == expected[identity], (name, seen)
    # Anonymous routes too: the validator's empty answer removes the real names, never the aliases.
    if wsgi_stack.gateway != "emissary":  # deploy/k8s/ambassador maps only /v1/models/
        r = wsgi_stack.call("/healthz", None, {n: "spoofed" for n in look_alikes(identity)[:2]}, method="GET")
        assert r.status_code == 400 or not any("spoofed" in v for v in identity_environ(r.json()).values()), r.text
