"""Real processes for end-to-end tests: issuer, validator, demo model API, nginx, Envoy.

Each helper starts one service as a subprocess on 127.0.0.1, waits until its readiness
URL answers (bounded in time) and stops it on exit. `Stack` composes them into the demo
deployment (local issuer → validator ← gateway → demo model API) so other suites (e.g.
the CKAN e2e test) can reuse it:

    with Stack.start(db_url, tmp_path) as stack:
        token = stack.create_token(roles=["model:sentiment:predict"])
        requests.post(stack.gateway_url + "/v1/models/sentiment/predict", headers=...)
"""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
