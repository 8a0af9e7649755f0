"""Envoy ext_authz over gRPC (grpc_authz.py), in-process: a started Validator (local issuer
over HTTP, real PostgreSQL) behind the real grpc.aio server, called through a real
grpc.aio client stub. Each answer is compared with the HTTP Envoy contract's answer for
the same request. tests/e2e/test_envoy_grpc.py runs it behind the real Envoy.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from google.rpc import code_pb2

from tests.support.stack import free_port
from tests.validator.test_app import PREDICT, envoy, scenario
from token_service.config import Settings
from token_service.errors import ConfigError
from token_service.issuers import Owner
from token_service.lifecycle import Actor, Lifecycle
from token_service.validator.app import Validator
from token_service.validator.decision import IDENTITY_HEADERS
from token_service.validator.grpc_authz import GrpcServer
from token_service.validator.settings import ValidatorSettings

OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
SPOOFED = {"x-auth-subject": "mallory", "x-auth-roles": "model:sentiment:train", "x-auth-scopes": "model-admin"}
Check = Callable[..., Awaitable[pb.CheckResponse]]


def check_request(method: str, path: str, headers: dict[str, str]) -> pb.CheckRequest:
    """A CheckRequest as Envoy sends it: lower-case header names, path with the query."""
    http = AttributeContext.HttpRequest(
        method=method, path=path, headers=headers, host="gateway", scheme="http", protocol="HTTP/1.1"
    )
    return pb.CheckRequest(attributes=AttributeContext(request=AttributeContext.Request(http=http)))


def with_grpc(validator: Validator, body: Callable[[Check], Awaitable[Any]]) -> Awaitable[Any]:
    """Run `body(check)` with the gRPC server of `validator` on a free port and a client stub."""

    async def run() -> Any:
        server = await GrpcServer(validator, "127.0.0.1", free_port()).start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.AuthorizationStub(channel)

                async def check(
                    token: str | None, path: str = PREDICT, method: str = "POST", extra: dict[str, str] | None = None
                ) -> pb.CheckResponse:
                    headers = {**(extra or {}), **({"authorization": f"Bearer {token}"} if token else {})}
                    return await stub.Check(check_request(method, path, headers), timeout=5)

                return await body(check)
        finally:
            await server.stop(0)

    return run()


def grpc_scenario(vsettings: ValidatorSettings, body: Callable[[Validator, Check], Awaitable[None]]) -> None:
    """Run `body(validator, check)` against a started Validator with its gRPC server."""

    async def run(v: Validator) -> None:
        await with_grpc(v, lambda check: body(v, check))

    scenario(vsettings, run)


def upstream(response: pb.CheckResponse) -> tuple[dict[str, str], list[str]]:
    """Headers an OK answer sets on the upstream request (each must overwrite), and those it removes."""
    assert response.status.code == code_pb2.OK and response.WhichOneof("http_response") == "ok_response"
    ok = response.ok_response
    assert all(h.append_action == OVERWRITE and not h.HasField("append") for h in ok.headers)
    return {h.header.key: h.header.value for h in ok.headers}, list(ok.headers_to_remove)


def denied(response: pb.CheckResponse) -> tuple[int, int, dict[str, str], str]:
    """(gRPC code, HTTP status, client headers, body) of a refusal."""
    assert response.WhichOneof("http_response") == "denied_response"
    d = response.denied_response
    assert all(h.append_action == OVERWRITE for h in d.headers)
    return response.status.code, d.status.code, {h.header.key: h.header.value for h in d.headers}, d.body


def _token(lifecycle: Lifecycle, roles: list[str], name: str) -> tuple[str, str]:
    issued = lifecycle.create(Owner("u-alice", "alice"), name, roles)
    return issued.secret, issued.info.id


def test_a_good_token_is_ok_with_the_identity_of_the_http_contract(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    token, token_id = _token(served_lifecycle, ["model:sentiment:predict"], "good")

    async def body(v: Validator, check: Check) -> None:
        sets, removes = upstream(await check(token, PREDICT + "?verbose=1", extra=SPOOFED))
        status, http_headers, _ = await envoy(v, token)
        assert status == 200
        expected = {k: val for k, val in http_headers if k.startswith("x-auth-")}
        assert sets == {k: val for k, val in expected.items() if val}
        assert sets["x-auth-subject"] == "u-alice" and sets["x-auth-token-id"] == token_id
        assert sets["x-auth-roles"] == "model:sentiment:predict"
        assert sets["x-auth-issuer"] == v.settings.issuers[0]
        # every identity header is either set (overwriting a client's copy) or removed
        assert sorted([*sets, *removes]) == sorted(IDENTITY_HEADERS)
        assert removes == [k for k in IDENTITY_HEADERS if not expected[k]]

    grpc_scenario(vsettings, body)


def test_refusals_carry_the_http_status_headers_and_generic_body(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    token, token_id = _token(served_lifecycle, ["model:vision:predict"], "vision")

    async def body(v: Validator, check: Check) -> None:
        code, status, headers, text = denied(await check(None, extra=SPOOFED))
        assert (code, status) == (code_pb2.UNAUTHENTICATED, 401)
        assert headers["www-authenticate"] == 'Bearer realm="mltokens"'
        assert headers["content-type"] == "application/json" and text == '{"error":"unauthorized"}\n'

        code, status, headers, text = denied(await check("abc.def.ghi"))
        assert (code, status) == (code_pb2.UNAUTHENTICATED, 401)
        assert headers["www-authenticate"] == 'Bearer realm="mltokens", error="invalid_token"'
        assert "abc" not in text

        code, status, headers, _ = denied(await check(token))  # vision token, sentiment route
        assert (code, status) == (code_pb2.PERMISSION_DENIED, 403)
        assert headers["www-authenticate"] == 'Bearer realm="mltokens", error="insufficient_scope"'

        for path in (
            "/a/../b",
            "/v1/models/vision/predict/../../sentiment/train",
            "/v1/models/%2e%2e/x",
            "/v1/models/vision%2Fpredict",
        ):
            assert denied(await check(token, path))[:2] == (code_pb2.PERMISSION_DENIED, 403), path
            assert (await envoy(v, token, path))[0] == 403, path

        assert upstream(await check(token, "/v1/models/vision/predict"))[0]["x-auth-token-id"] == token_id
        await asyncio.to_thread(served_lifecycle.revoke, token_id, Actor.operator())
        deadline = asyncio.get_running_loop().time() + 2
        while (answer := await check(token, "/v1/models/vision/predict")).status.code == code_pb2.OK:
            assert asyncio.get_running_loop().time() < deadline, "revocation not seen"
            await asyncio.sleep(0.01)
        code, status, headers, _ = denied(answer)
        assert (code, status) == (code_pb2.UNAUTHENTICATED, 401)
        assert headers["www-authenticate"] == 'Bearer realm="mltokens", error="invalid_token"'

    grpc_scenario(vsettings, body)


def test_anonymous_route_is_ok_and_removes_every_identity_header(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    async def body(v: Validator, check: Check) -> None:
        sets, removes = upstream(await check(None, "/healthz", "GET", extra=SPOOFED))
        assert sets == {} and sorted(removes) == sorted(IDENTITY_HEADERS)
        assert denied(await check(None, "/healthz", "POST"))[:2] == (code_pb2.UNAUTHENTICATED, 401)

    grpc_scenario(vsettings, body)


def test_a_validator_that_is_not_ready_fails_closed_with_503(
    vsettings: ValidatorSettings, served_lifecycle: Lifecycle
) -> None:
    token, _ = _token(served_lifecycle, ["model:sentiment:predict"], "early")

    async def run() -> tuple[int, int, dict[str, str]]:
        v = Validator(vsettings)  # never started: no revocations loaded

        async def grpc_body(check: Check) -> tuple[int, int, dict[str, str]]:
            assert (await envoy(v, token))[0] == 503
            return denied(await check(token))[:3]

        return await with_grpc(v, grpc_body)

    code, status, headers = asyncio.run(run())
    assert (code, status) == (code_pb2.UNAVAILABLE, 503) and headers["retry-after"]


def test_every_worker_binds_the_port_with_so_reuseport_and_a_taken_port_fails(vsettings: ValidatorSettings) -> None:
    async def run() -> None:
        v = Validator(vsettings)
        port = free_port()
        first = await GrpcServer(v, "127.0.0.1", port).start()
        second = await GrpcServer(v, "127.0.0.1", port).start()  # a second worker on the same port
        await asyncio.gather(first.stop(0), second.stop(0))
        with socket.create_server(("127.0.0.1", 0)) as plain:  # no SO_REUSEPORT: nobody else may bind
            with pytest.raises(RuntimeError):
                await GrpcServer(v, "127.0.0.1", plain.getsockname()[1]).start()

    asyncio.run(run())


def test_grpc_port_setting(served_settings: Settings, vsettings: ValidatorSettings) -> None:
    base = {"policy_file": vsettings.policy_file}
    assert ValidatorSettings.from_mapping(base, served_settings).grpc_port == 0
    env = {
        "MLTOKENS_VALIDATOR_GRPC_PORT": "9002",
        "MLTOKENS_VALIDATOR_POLICY_FILE": vsettings.policy_file,
        "MLTOKENS_ISSUER_URL": "http://127.0.0.1:1",
    }
    assert ValidatorSettings.load(None, env).grpc_port == 9002
    for value, message in (
        (-1, "a TCP port"),
        (65536, "a TCP port"),
        ("x", "not a whole number"),
        (vsettings.port, "must differ from port"),
    ):
        with pytest.raises(ConfigError, match=f"grpc_port.*{message}"):
            ValidatorSettings.from_mapping({**base, "grpc_port": value}, served_settings)
