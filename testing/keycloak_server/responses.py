"""JSON and empty responses with the headers Keycloak sends."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON body, as Keycloak (Jackson) writes it."""
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def no_content() -> Response:
    """204 without a body."""
    return Response(status=204)


def created(location: str) -> Response:
    """201 with a ``Location`` header and no body."""
    return Response(status=201, headers={"Location": location})
