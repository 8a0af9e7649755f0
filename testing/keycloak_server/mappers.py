"""OIDC protocol mappers the server implements, applied as Keycloak applies them.

Supported ``protocolMapper`` types: ``oidc-hardcoded-claim-mapper``,
``oidc-audience-mapper`` and ``oidc-usermodel-attribute-mapper``. Creating a mapper of
another type is refused like Keycloak refuses an unknown provider.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import not_found
from .realm import ProtocolMapper, Realm, User

HARDCODED_CLAIM = "oidc-hardcoded-claim-mapper"
AUDIENCE = "oidc-audience-mapper"
USER_ATTRIBUTE = "oidc-usermodel-attribute-mapper"
SUPPORTED = frozenset({HARDCODED_CLAIM, AUDIENCE, USER_ATTRIBUTE})

# Token kinds and the config switch that includes a mapper in each.
INCLUDE_KEYS = {
    "access": "access.token.claim",
    "id": "id.token.claim",
    "userinfo": "userinfo.token.claim",
    "introspection": "introspection.token.claim",
}
FALLBACK = {"userinfo": "id", "introspection": "access"}


def check_supported(protocol_mapper: str) -> None:
    """404 ``ProtocolMapper provider not found`` for an unknown mapper type."""
    if protocol_mapper not in SUPPORTED:
        raise not_found("ProtocolMapper provider not found")


def _included(config: dict[str, str], kind: str) -> bool:
    """OIDCAttributeMapperHelper: access and ID tokens need an explicit "true"; a
    missing userinfo switch follows the ID token's, a missing introspection switch
    the access token's (backwards compatibility)."""
    value = config.get(INCLUDE_KEYS[kind])
    if value is None and kind in FALLBACK:
        return _included(config, FALLBACK[kind])
    return value == "true"


def _convert(value: str, json_type: str | None) -> Any:
    if json_type in ("long", "int"):
        return int(value)
    if json_type == "boolean":
        return value.strip().lower() == "true"
    if json_type == "JSON":
        return json.loads(value)
    return value


def _set_claim(claims: dict[str, Any], name: str, value: Any) -> None:
    """Set a possibly nested claim (``a.b`` nests, ``a\\.b`` is a literal dot)."""
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", name)]
    target = claims
    for part in parts[:-1]:
        nested = target.get(part)
        if not isinstance(nested, dict):
            nested = {}
            target[part] = nested
        target = nested
    target[parts[-1]] = value


def _add_audience(claims: dict[str, Any], audience: str) -> None:
    current = claims.get("aud")
    values = [] if current is None else ([current] if isinstance(current, str) else list(current))
    if audience not in values:
        values.append(audience)
    claims["aud"] = values[0] if len(values) == 1 else values


def apply(claims: dict[str, Any], kind: str, realm: Realm, found: list[ProtocolMapper], user: User) -> None:
    """Apply protocol mappers (a client's, then its client scopes') to ``claims`` of a
    token of ``kind``."""
    for mapper in found:
        config = mapper.config
        if not _included(config, kind):
            continue
        if mapper.protocol_mapper == HARDCODED_CLAIM and config.get("claim.name"):
            _set_claim(
                claims,
                config["claim.name"],
                _convert(config.get("claim.value", ""), config.get("jsonType.label")),
            )
        elif mapper.protocol_mapper == AUDIENCE and kind in ("access", "introspection"):
            target = config.get("included.client.audience")
            if target and realm.client_by_client_id(target) is not None:
                _add_audience(claims, target)
            if config.get("included.custom.audience"):
                _add_audience(claims, config["included.custom.audience"])
        elif mapper.protocol_mapper == USER_ATTRIBUTE and config.get("claim.name"):
            values = user.attributes.get(config.get("user.attribute", ""))
            if values:
                value: Any = values if config.get("multivalued") == "true" else values[0]
                if isinstance(value, str):
                    value = _convert(value, config.get("jsonType.label"))
                _set_claim(claims, config["claim.name"], value)
