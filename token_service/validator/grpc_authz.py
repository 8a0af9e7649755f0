"""Envoy ext_authz over gRPC: `envoy.service.auth.v3.Authorization/Check` on `grpc_port`.

Optional (`pip install .[grpc]`) and off unless `grpc_port` is set: grpcio and the
generated Envoy API (xds-protos) cost a worker many megabytes, so only the lifespan of a
worker with `grpc_port` imports this module (app.py). The server runs in the worker's
own event loop beside the HTTP server and shares its `Validator`.

A CheckRequest is decided exactly like the HTTP contract's sub-request: the original
method, and `ENVOY_PREFIX` + the original path, with the request's (lower-case) headers.
The answer maps onto a CheckResponse:

- 200 → status OK with `OkHttpResponse`: every identity header with a value is set on
  the upstream request with `OVERWRITE_IF_EXISTS_OR_ADD`, and every identity header
  without one is in `headers_to_remove`: a client's `X-Auth-*` never passes. The action
  is explicit: the proto's default enum value is APPEND_IF_EXISTS_OR_ADD, which would
  keep a client's copy (Envoy 1.40 treats an unset action in ext_authz as overwrite,
  but older and other implementations need not).
- anything else → a non-OK status (UNAUTHENTICATED for 401, PERMISSION_DENIED for 403, …)
  with `DeniedHttpResponse`: the same HTTP status (503 stays 503: fail closed), the
  client-facing headers (`WWW-Authenticate`, `Retry-After`, …) and the same generic body.

With several workers every worker binds `grpc_port` with SO_REUSEPORT (grpc's default
on Linux, set explicitly here); the kernel spreads new connections over them.
"""

from __future__ import annotations

import logging

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc import code_pb2
from google.rpc.status_pb2 import Status

from .app import Response, Validator, refusal
from .contracts import ENVOY_PREFIX
from .decision import IDENTITY_HEADERS, deny
from .memo import remember
from .reasons import Reason

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds in-flight checks may take to finish when a worker stops
OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Headers of a refusal that go back to the client (as `allowed_client_headers` in the HTTP config).
CLIENT_HEADERS = frozenset({"www-authenticate", "retry-after", "content-type", "cache-control"})
GRPC_CODES = {
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}
_IDENTITY = frozenset(IDENTITY_HEADERS)
_CACHE_ENTRIES = 4096
# CheckResponses by answer, per process: answers repeat (one header tuple per cached token).
_RESPONSES: dict[Response, pb.CheckResponse] = {}
_FAILED = refusal(deny(Reason.INTERNAL_ERROR))


def _option(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=name, value=value), append_action=OVERWRITE)


def check_response(response: Response) -> pb.CheckResponse:
    """The CheckResponse for a validator answer (status, headers, body)."""
    cached = _RESPONSES.get(response)
    if cached is not None:
        return cached
    status, headers, body = response
    if status == 200:
        identity = {name: value for name, value in headers if name in _IDENTITY and value}
        answer = pb.CheckResponse(
            status=Status(code=code_pb2.OK),
            ok_response=pb.OkHttpResponse(
                headers=[_option(name, value) for name, value in identity.items()],
                headers_to_remove=[name for name in IDENTITY_HEADERS if name not in identity],
            ),
        )
    else:
        answer = pb.CheckResponse(
            status=Status(code=GRPC_CODES.get(status, code_pb2.PERMISSION_DENIED)),
            denied_response=pb.DeniedHttpResponse(
                status=HttpStatus(code=status),  # type: ignore[arg-type]  # an int of StatusCode
                headers=[_option(name, value) for name, value in headers if name in CLIENT_HEADERS],
                body=body.decode("utf-8", "replace"),
            ),
        )
    return remember(_RESPONSES, response, answer, _CACHE_ENTRIES)


class Authorization(pb_grpc.AuthorizationServicer):
    """The Check RPC, decided by the worker's Validator."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:  # noqa: N802
        http = request.attributes.request.http
        try:
            answer = self.validator.respond(http.method, ENVOY_PREFIX + http.path.split("?", 1)[0], http.headers.get)
            if not isinstance(answer, tuple):
                answer = await answer
        except Exception:
            log.exception("gRPC check failed; answering 503")
            answer = _FAILED
        return check_response(answer)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """The ext_authz gRPC server of one worker, on the settings' `host` and `grpc_port`."""

    def __init__(self, validator: Validator, host: str | None = None, port: int | None = None) -> None:
        self.address = address(host or validator.settings.host, port or validator.settings.grpc_port)
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        pb_grpc.add_AuthorizationServicer_to_server(Authorization(validator), self.server)

    async def start(self) -> GrpcServer:
        """Bind (RuntimeError if the address cannot be bound) and start serving."""
        self.server.add_insecure_port(self.address)
        await self.server.start()
        log.info("ext_authz gRPC on %s", self.address)
        return self

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting, let in-flight checks finish for up to `grace` seconds."""
        await self.server.stop(grace)


async def serve(validator: Validator) -> GrpcServer:
    """Start the gRPC server of `validator` (its settings name host and port)."""
    return await GrpcServer(validator).start()
