"""The validator as an HTTP application: one `Validator`, served over RSGI or ASGI.

Endpoints: the decision endpoints of `contracts`, `/healthz` (the process answers),
`/readyz` (revocations loaded and current, the keys of the issuers `readiness_issuers`
names loaded: by default the first issuer's) and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from . import introspection
from .answers import Tally
from .bearer import BearerError, bearer_token, credential
from .contracts import ENVOY_PREFIX, HEADER_CONTRACTS, ContractError, Original, original_request
from .decision import Decider, Decision, Headers, Identity, NeedKeys, deny
from .jwks import Fetcher, KeyCache, fetch_json
from .metrics import CONTENT_TYPE, Metrics
from .policy import Policy
from .ratelimit import Limiter
from .reasons import Reason
from .revocations import RevocationFeed, RevocationSet
from .settings import ValidatorSettings
from .usage import UsageRecorder

log = logging.getLogger("token_service.validator")

Response = tuple[int, Headers, bytes]
_TEXT = (("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store"))
_BODIES = {
    200: b"",
    401: b'{"error":"unauthorized"}\n',
    403: b'{"error":"insufficient_scope"}\n',
    404: b'{"error":"not_found"}\n',
    429: b'{"error":"rate_limited"}\n',
    503: b'{"error":"temporarily_unavailable"}\n',
}
_JSON = ("content-type", "application/json")
NOT_FOUND: Response = (404, (_JSON,), _BODIES[404])
INTROSPECT = "/introspect"
# The headers a decision reads, each allowed once whatever the server: a repeated one would leave it
# open which copy the gateway or model API uses. An introspection request's content type too.
DECISION_HEADERS = ("authorization", *(name for pair in HEADER_CONTRACTS.values() for name in pair))
_ONCE = {False: DECISION_HEADERS, True: (*DECISION_HEADERS, "content-type")}
_ONCE_RAW = {introspect: frozenset(name.encode() for name in names) for introspect, names in _ONCE.items()}
STARTUP_READY_WITHIN = 5.0  # seconds a starting worker waits to be ready before it accepts requests


def freeze_startup_heap() -> None:
    """Once a worker has started: collect once, then move every object alive (modules, settings,
    policy, keys) into the permanent generation, which no later collection traverses.

    A full collection of a worker's start-up heap took 35–55 ms on the bench host, a pause every
    request in flight waits out; frozen, it takes microseconds (docs/benchmarks.md, "The warm
    path's tail"). What a worker allocates later (cached tokens) is collected as before.
    """
    gc.collect()
    gc.freeze()


def refusal(decision: Decision) -> Response:
    """A refused decision as a response: its status and headers, a constant generic body."""
    return decision.status, decision.headers + (_JSON,), _BODIES[decision.status]


def repeated_header() -> Response:
    """The answer to a repeated `DECISION_HEADERS` header, as the lean server's (protocol.py): 400, no body."""
    reason = Reason.MALFORMED_REQUEST
    log.info("refuse %d %s before a decision", reason.status, reason)
    return reason.status, (), b""


def _failed() -> Decision:
    """A bug must fail closed, counted and logged, never as an anonymous 500."""
    log.exception("decision failed; answering 503")
    return deny(Reason.INTERNAL_ERROR)


class Validator:
    """Keys, revocations, policy and usage of one worker, with their background tasks."""

    def __init__(self, settings: ValidatorSettings, policy: Policy | None = None, fetch: Fetcher = fetch_json) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.revocations = RevocationSet()
        self.keys = KeyCache(
            settings.issuers,
            settings.jwks_refresh_interval,
            settings.jwks_min_refetch_interval,
            settings.jwks_timeout,
            fetch,
            on_refresh=self.metrics.key_refresh,
            on_keys_removed=self._keys_removed,
            required=settings.required_issuers,
            discovery=settings.discovery,
        )
        self.decider = Decider(settings, self.keys, self.revocations, policy or Policy.load(settings.policy_file))
        self.feed = RevocationFeed(
            settings.database_url,
            self.revocations,
            settings.heartbeat_interval,
            settings.resync_interval,
            on_connection_lost=self.metrics.feed_reconnects.inc,
        )
        self.usage = UsageRecorder(settings.database_url, settings.usage_flush_interval)
        self.tally = Tally()  # the lean server's answers given again, folded by `fold`
        self.limiter = Limiter(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.redis_timeout,
            settings.redis_retry_interval,
            on_backend=self.metrics.ratelimit_backend,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _keys_removed(self) -> None:
        self.decider.clear_cache()

    @property
    def ready(self) -> bool:
        r = self.revocations
        return r.loaded and r.age(time.monotonic()) <= self.settings.max_staleness and self.keys.ready

    async def start(self, ready_within: float = 0.0) -> None:
        """Start the background tasks (revocation feed, key refresh, usage flush, gauges).

        With `ready_within`, wait up to that long for revocations and keys to load, so a
        server that starts accepting only after this returns (a new or replacement worker)
        does not answer 503 to the requests it takes first. After that it serves anyway:
        `/healthz` must answer while PostgreSQL or an issuer is unreachable.
        """
        for job in (self.feed.run(), self.keys.run(), self.usage.run(), self._gauges()):
            self._tasks.append(asyncio.get_running_loop().create_task(job))
        deadline = time.monotonic() + ready_within
        while not self.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Cancel background tasks and write the last usage counts."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.fold()
        self.metrics.flush()
        await self.usage.flush()
        await self.usage.close()
        await self.limiter.close()

    async def _gauges(self) -> None:
        while True:
            self._update_gauges()
            await asyncio.sleep(1.0)

    def fold(self) -> None:
        """Move the answers given again since the last fold into the metrics and usage."""
        self.tally.fold(self.metrics, self.usage)

    def _update_gauges(self) -> None:
        self.fold()
        m = self.metrics
        m.flush()
        m.revocations.set(len(self.revocations))
        age = self.revocations.age(time.monotonic())
        m.revocation_age.set(age if age != float("inf") else -1)
        m.cache_entries.set(len(self.decider.cache))

    async def handle(
        self, method: str, path: str, header: Callable[[str], str | None], body: bytes | None = None
    ) -> Response:
        """Answer one HTTP request; `path` is raw (not percent-decoded), `header` takes lower-case names."""
        response = self.respond(method, path, header, body)
        return response if isinstance(response, tuple) else await response

    def respond(
        self, method: str, path: str, header: Callable[[str], str | None], body: bytes | None = None
    ) -> Response | Awaitable[Response]:
        """The response, at once when the decision needs no I/O (almost always), else an awaitable.

        A decision waits only to refetch keys for an unknown `kid` or to count shared (Redis)
        rate limits. `body` is read only for `INTROSPECT` (None: larger than `max_body`).
        """
        if path == INTROSPECT:
            return self.introspection(method, header, body)
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            return (200, _TEXT, b"ready\n") if self.ready else (503, _TEXT, b"not ready\n")
        if path == "/metrics":
            self._update_gauges()
            return 200, (("content-type", CONTENT_TYPE),), self.metrics.exposition()
        started = time.perf_counter()
        try:
            original = original_request(path, method, header)
        except ContractError as exc:
            return self._answer(deny(exc.reason), started, path)
        if original is None:
            return NOT_FOUND
        return self.decide(original, header("authorization"), started)

    def decide(self, original: Original, authorization: str | None, started: float) -> Response | Awaitable[Response]:
        """The decision on an original request and its Authorization header (the contracts' and the proxy's)."""
        try:
            token = bearer_token(authorization, self.settings.max_token_bytes)
        except BearerError as exc:
            return self._answer(deny(exc.reason), started, original.path)
        try:
            decision = self.decider.decide(original.method, original.path, token)
        except Exception:
            decision = _failed()
        if not isinstance(decision, Decision) or decision.limits:
            return self._settled(decision, original, token, started)
        return self._finish(decision, started, original.path)

    async def _settled(
        self, decision: Decision | NeedKeys, original: Original, token: str | None, started: float
    ) -> Response:
        try:
            decision = await self._settle(decision, original, token)
        except Exception:
            decision = _failed()
        return self._finish(decision, started, original.path)

    async def _settle(self, decision: Decision | NeedKeys, original: Original, token: str | None) -> Decision:
        """The decision's awaited steps: a refetch of keys for an unknown `kid`, then rate limits."""
        if isinstance(decision, NeedKeys):
            await self.keys.refetch_for_unknown_kid(decision.issuer)
            decision = self.decider.decide(original.method, original.path, token, refetched=True)
        assert isinstance(decision, Decision)
        if decision.limits:
            exceeded = await self.limiter.take(decision.limit_key, decision.limits)
            if exceeded is not None:
                decision = Decision(
                    exceeded.reason.status, exceeded.reason, exceeded.headers, decision.token_id, decision.subject
                )
        return decision

    def introspection(
        self, method: str, header: Callable[[str], str | None], body: bytes | None
    ) -> Response | Awaitable[Response]:
        """RFC 7662 (introspection.py); the endpoint does not exist while no secret is configured."""
        settings = self.settings
        if not settings.introspection_secret:
            return NOT_FOUND
        if method != "POST":
            return introspection.NOT_ALLOWED
        try:
            if body is None:
                raise introspection.BadRequest("body too large")
            params = introspection.form(header("content-type"), body)
        except introspection.BadRequest as exc:
            log.info("introspection: invalid request (%s)", exc)
            return introspection.INVALID_REQUEST
        authorization = header("authorization")
        if not introspection.authenticated(
            authorization, params, settings.introspection_client_id, settings.introspection_secret
        ):
            log.info("introspection: caller not authenticated")
            return introspection.INVALID_CLIENT
        token = params.get("token")
        if token is None:
            return introspection.INVALID_REQUEST
        try:
            token = credential(token, settings.max_token_bytes)
        except BearerError as exc:
            return self._introspected(deny(exc.reason))
        try:
            result = self.decider.introspect(token)
        except Exception:
            result = _failed()
        if isinstance(result, NeedKeys):
            return self._introspect_refetched(result, token)
        return self._introspected(result)

    async def _introspect_refetched(self, need: NeedKeys, token: str) -> Response:
        try:
            await self.keys.refetch_for_unknown_kid(need.issuer)
            result = self.decider.introspect(token, refetched=True)
        except Exception:
            result = _failed()
        assert not isinstance(result, NeedKeys)
        return self._introspected(result)

    def _introspected(self, result: Identity | Decision) -> Response:
        if isinstance(result, Identity):
            self.metrics.introspections.labels("true").inc()
            if result.token_id is not None:
                self.usage.record(result.token_id, time.time())
            return 200, introspection.ACTIVE_HEADERS, introspection.active(result)
        if result.status == 503:  # not known to be inactive: the gateway should retry, not drop the token
            log.info("introspection: %d %s", result.status, result.reason)
            return refusal(result)
        log.info("introspection: inactive (%s)", result.reason)
        self.metrics.introspections.labels("false").inc()
        return introspection.INACTIVE

    def _finish(self, decision: Decision, started: float, path: str) -> Response:
        if decision.status == 200 and decision.token_id is not None:
            self.usage.record(decision.token_id, time.time())
        return self._answer(decision, started, path)

    def refuse(self, reason: Reason, started: float, path: str) -> Response:
        """A refusal before the decision proper (the proxy's own checks), counted and logged as decisions are."""
        return self._answer(deny(reason), started, path)

    def _answer(self, decision: Decision, started: float, path: str) -> Response:
        self.metrics.decision(decision.reason, time.perf_counter() - started)
        if decision.status != 200:
            log.info("deny %d %s path=%s", decision.status, decision.reason, path[:200])
            return refusal(decision)
        return 200, decision.headers, b""


class RSGIApp:
    """granian's RSGI interface; starts and stops the Validator with the worker's loop."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self.grpc: Any = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.validator.start(STARTUP_READY_WITHIN))
        self.grpc = loop.run_until_complete(start_grpc(self.validator))
        freeze_startup_heap()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.grpc is not None:
            loop.run_until_complete(self.grpc.stop())
        loop.run_until_complete(self.validator.stop())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        path, request_headers = scope.path, scope.headers
        for name in _ONCE[path == INTROSPECT]:
            if len(request_headers.get_all(name)) > 1:
                status, headers, answer = repeated_header()
                proto.response_bytes(status, list(headers), answer)
                return
        if path.startswith(ENVOY_PREFIX) and (len(path) == len(ENVOY_PREFIX) or path[len(ENVOY_PREFIX)] == "/"):
            # RSGI gives the path percent-decoded (lossily), never as sent: the Envoy prefix contract
            # would decide on a path decoded twice (`..` or `?` smuggled in as %2e, %3F, %2F, %25)
            status, headers, answer = self.validator.refuse(Reason.UNSUPPORTED_CONTRACT, time.perf_counter(), path)
            proto.response_bytes(status, list(headers), answer)
            return
        body = None
        if path == INTROSPECT:
            # one whose declared length is past the bound is not read; a chunked one is read as it comes
            length = request_headers.get("content-length", "")
            max_token_bytes = self.validator.settings.max_token_bytes
            if not (length.isdigit() and int(length) > introspection.max_body(max_token_bytes)):
                body = await read_bounded(proto, max_token_bytes)  # iterated once: granian's refuses a second __aiter__
        status, headers, answer = await self.validator.handle(scope.method, path, request_headers.get, body)
        proto.response_bytes(status, list(headers), answer)


class ASGIApp:
    """The same over ASGI (uvicorn or granian), with lifespan start and stop."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_headers = scope["headers"]
        raw = dict(request_headers)

        def header(name: str) -> str | None:
            value = raw.get(name.encode())
            return None if value is None else value.decode("latin-1")

        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        if len(raw) < len(request_headers) and _repeats(request_headers, _ONCE_RAW[path == INTROSPECT]):
            status, headers, body = repeated_header()
        else:
            request_body = None
            if path == INTROSPECT:
                request_body = await read_bounded(_asgi_chunks(receive), self.validator.settings.max_token_bytes)
            status, headers, body = await self.validator.handle(scope["method"], path, header, request_body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        grpc = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.validator.start(STARTUP_READY_WITHIN)
                grpc = await start_grpc(self.validator)
                freeze_startup_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if grpc is not None:
                    await grpc.stop()
                await self.validator.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _repeats(headers: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> bool:
    """Whether one of `names` comes more than once in an ASGI scope's (lower-case) headers."""
    found = [name for name, _ in headers if name in names]
    return len(found) > len(set(found))


async def read_bounded(chunks: AsyncIterable[bytes], max_token_bytes: int, *, drain: bool = True) -> bytes | None:
    """A request body read whole, or None past `introspection.max_body`: the rest then read and dropped
    (`drain`: a server that wants the body read to its end), or left unread (the caller closes the connection)."""
    limit, parts, size = introspection.max_body(max_token_bytes), [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size <= limit:
            parts.append(chunk)
        elif not drain:
            return None
    return b"".join(parts) if size <= limit else None


async def _asgi_chunks(receive: Callable[..., Any]) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def start_grpc(validator: Validator) -> Any:
    """The Envoy ext_authz gRPC server (grpc_authz.py) when `grpc_port` is set, else None.

    Imported only then: grpcio and Envoy's generated API would cost every worker megabytes.
    """
    if not validator.settings.grpc_port:
        return None
    from .grpc_authz import serve

    return await serve(validator)


def rsgi() -> RSGIApp:
    """Factory for granian: settings from MLTOKENS_CONFIG and the environment."""
    return RSGIApp(Validator(ValidatorSettings.load()))


def asgi() -> ASGIApp:
    """Factory for uvicorn or granian's ASGI interface."""
    return ASGIApp(Validator(ValidatorSettings.load()))
