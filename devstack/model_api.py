"""A small stand-in for a GPU-backed model server: two models, predict and train routes.

Routes: `GET /healthz`, `GET /v1/models`, `POST /v1/models/{sentiment|vision}/predict`,
`POST /v1/models/{sentiment|vision}/train`, and the streaming routes of `model_streams`
(server-sent events, a chunked download, an upload sink, a WebSocket). It trusts the gateway: the caller's identity
arrives in the `X-Auth-*` headers set from the validator's answer, and every response
echoes them under `"caller"` so a person (or a test) can see who the gateway let in.

It computes on the GPU with torch when torch is importable and CUDA is present, and in
plain Python otherwise; torch is never a dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack import model_streams

log = logging.getLogger("devstack.model_api")

MAX_BODY = 1 << 20
IDENTITY = (
    "x-auth-subject",
    "x-auth-owner",
    "x-auth-owner-name",
    "x-auth-owner-kind",
    "x-auth-token-id",
    "x-auth-roles",
    "x-auth-scopes",
    "x-auth-issuer",
)


def _device() -> tuple[str, Any]:
    """('cuda', torch) when a GPU is usable, else ('cpu', None)."""
    try:
        import torch
    except ImportError:
        return "cpu", None
    return ("cuda", torch) if torch.cuda.is_available() else ("cpu", None)


class Models:
    """A lexicon sentiment model and a brightness 'vision' model, both trainable."""

    def __init__(self) -> None:
        self.device, self.torch = _device()
        self.lock = threading.Lock()
        self.lexicon = {"good": 1.0, "great": 1.5, "love": 1.5, "bad": -1.0, "awful": -1.5, "hate": -1.5}
        self.threshold = 0.5
        self.trained = {"sentiment": 0, "vision": 0}

    def predict(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        if model == "sentiment":
            text = str(body.get("text", ""))
            score = sum(self.lexicon.get(w.strip(".,!?").lower(), 0.0) for w in text.split())
            label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
            return {"label": label, "score": score}
        pixels = [float(p) for p in body.get("pixels", [])][:65536]
        if not pixels:
            raise ValueError("pixels: give a non-empty list of numbers in [0, 1]")
        mean = self._mean(pixels)
        return {"label": "bright" if mean >= self.threshold else "dark", "mean": round(mean, 4)}

    def _mean(self, pixels: list[float]) -> float:
        if self.torch is not None:
            return float(self.torch.tensor(pixels, device=self.device).mean().item())
        return math.fsum(pixels) / len(pixels)

    def train(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if model == "sentiment":
                for word, weight in dict(body.get("lexicon", {})).items():
                    self.lexicon[str(word).lower()] = float(weight)
            else:
                examples = [self._mean([float(p) for p in e]) for e in body.get("examples", []) if e]
                if examples:
                    self.threshold = math.fsum(examples) / len(examples)
            self.trained[model] += 1
            return {"model": model, "updates": self.trained[model]}


def _route(path: str) -> tuple[str, str] | None:
    """(model, action) of `/v1/models/{model}/{action}`, else None."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) != 4 or parts[:2] != ["v1", "models"] or parts[2] not in ("sentiment", "vision"):
        return None
    return parts[2], parts[3]


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    models = Models()
    stats = model_streams.Stats()

    class Handler(BaseHTTPRequestHandler):
        server_version = "demo-model-api"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._discard_body()
            route = _route(self.path)
            if self.path == "/healthz":
                self._send(200, {"status": "ok", "device": models.device, "caller": self._caller()})
            elif self.path == "/v1/models":
                self._send(200, {"models": ["sentiment", "vision"], "caller": self._caller()})
            elif self.path == "/stream-stats":
                self._send(200, dict(stats.counts))
            elif route and route[1] == "download":
                model_streams.download(self, self.path.partition("?")[2], self._caller())
            elif route and route[1] == "live" and self.headers.get("Upgrade", "").lower() == "websocket":
                model_streams.websocket(self, self._caller())
            else:
                self._send(404, {"error": "not_found"})

        def do_PUT(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            route = _route(self.path)
            if route and route[1] == "upload":
                try:
                    received = model_streams.upload(self)
                except ValueError:
                    self.close_connection = True
                    return
                self._send(200, {"bytes": received, "caller": self._caller()})
                return
            if route is None or route[1] not in ("predict", "train", "stream") or self.command != "POST":
                self._send(404, {"error": "not_found"})
                return
            model, action = route
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise ValueError("body too large")
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                if action == "stream":
                    model_streams.sse(self, body, self._caller(), stats)
                    return
                result = models.predict(model, body) if action == "predict" else models.train(model, body)
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": "bad_request", "detail": str(exc)[:200]})
                return
            self._send(
                200,
                {"model": model, "action": action, "device": models.device, "result": result, "caller": self._caller()},
            )

        def _discard_body(self) -> None:
            """Read a GET's unexpected body so the kept-alive connection stays in step."""
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
            elif length:
                self.rfile.read(length)

        def _caller(self) -> dict[str, str | None]:
            return {h: self.headers.get(h) for h in IDENTITY}

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8903)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(args.host, args.port)
    log.info("demo model API on http://%s:%d (device %s)", args.host, args.port, _device()[0])
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
