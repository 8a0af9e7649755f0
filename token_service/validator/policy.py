"""Route policy from YAML: path pattern and methods → required roles or scopes.

```yaml
anonymous:                       # no token needed (e.g. the model API's health check)
  - {path: /healthz, methods: [GET, HEAD]}
routes:                          # first match wins; a request matching nothing is denied
  - path: /v1/models/{model}/predict
    methods: [POST]
    roles: ["model:{model}:predict"]     # all of these roles
  - path: /v1/models/{model}/train
    methods: [POST]
    any_roles: ["model:{model}:train", "admin"]   # at least one of these
    scopes: []                                     # all of these scopes (`scope` claim)
    rate_limit: 2          # optional, per token: requests/second (token bucket) ...
    burst: 4               # ... with this burst (default: one second's worth)
    daily_quota: 500       # optional, per token: requests per UTC day (docs/rate-limits.md)
  - path: /v1/models/{model}/live
    methods: [GET]
    roles: ["model:{model}:predict"]
    websocket: true        # `mltokens proxy` passes a WebSocket upgrade through (default: refused)
```

`{name}` matches one path segment of letters, digits, `.`, `_` or `-` and may be used in
the role and scope templates; a path ending in `/**` matches the path and everything
below it. Methods are upper-case names or `*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .memo import remember
from .ratelimit import Limit, route_limit

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEGMENT = r"[A-Za-z0-9._\-]+"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})


@dataclass(frozen=True)
class Rule:
    pattern: str
    regex: re.Pattern[str]
    methods: frozenset[str]
    roles: tuple[str, ...] = ()
    any_roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    anonymous: bool = False
    limit: Limit | None = None
    websocket: bool = False

    def allows_method(self, method: str) -> bool:
        return "*" in self.methods or method in self.methods


@dataclass(frozen=True)
class Match:
    """A rule that fits a request, with its role and scope templates filled in from the path."""

    rule: Rule
    params: dict[str, str]
    all_roles: frozenset[str]
    any_roles: frozenset[str]
    scopes: frozenset[str]

    @classmethod
    def of(cls, rule: Rule, params: dict[str, str]) -> Match:
        def fill(templates: tuple[str, ...]) -> frozenset[str]:
            return frozenset(t.format_map(params) for t in templates)

        return cls(rule, params, fill(rule.roles), fill(rule.any_roles), fill(rule.scopes))

    def required(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(all roles, any roles, all scopes) with the path parameters filled in."""
        return self.all_roles, self.any_roles, self.scopes

    def grants(self, roles: frozenset[str], scopes: frozenset[str]) -> bool:
        """Whether a token with these roles and scopes satisfies the rule."""
        return (
            self.all_roles <= roles
            and self.scopes <= scopes
            and (not self.any_roles or not self.any_roles.isdisjoint(roles))
        )


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ConfigError(f"policy: path {pattern!r} must start with /")
    tail = ""
    if pattern.endswith("/**"):
        pattern, tail = pattern[:-3], r"(?:/.*)?"
    if any(c in _PLACEHOLDER.sub("", pattern) for c in "*{}"):
        raise ConfigError(f"policy: path {pattern!r}: only {{name}} and a final /** are patterns")
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{_SEGMENT})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + tail)


def _strings(item: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"policy: {where}: {key} must be a list of strings")
    return tuple(value)


_LIMIT_KEYS = ("rate_limit", "burst", "daily_quota")


def _limit(item: dict[str, Any], where: str, methods: frozenset[str]) -> Limit | None:
    rps, burst, daily = (item.get(k) for k in _LIMIT_KEYS)
    if rps is not None and (isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < float("inf")):
        raise ConfigError(f"policy: {where}: rate_limit must be a positive number (requests per second)")
    for key, value in (("burst", burst), ("daily_quota", daily)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"policy: {where}: {key} must be a positive whole number")
    if burst is not None and rps is None:
        raise ConfigError(f"policy: {where}: burst needs a rate_limit")
    return route_limit(item["path"], methods, None if rps is None else float(rps), burst, daily)


def _rule(item: Any, where: str, anonymous: bool) -> Rule:
    """One policy entry as a Rule, or ConfigError naming the entry (`where`) and what is wrong."""
    _check_keys(item, where, anonymous)
    methods = _methods(item, where)
    regex = _compile(item["path"])
    rule = Rule(
        item["path"],
        regex,
        methods,
        _strings(item, "roles", where),
        _strings(item, "any_roles", where),
        _strings(item, "scopes", where),
        anonymous,
        _limit(item, where, methods),
        _websocket(item, where),
    )
    _check_templates(rule, where)
    if not anonymous and not (rule.roles or rule.any_roles or rule.scopes):
        raise ConfigError(f"policy: {where}: a route needs roles, any_roles or scopes (or list it as anonymous)")
    return rule


def _websocket(item: dict[str, Any], where: str) -> bool:
    value = item.get("websocket", False)
    if not isinstance(value, bool):
        raise ConfigError(f"policy: {where}: websocket must be true or false")
    return value


def _check_keys(item: Any, where: str, anonymous: bool) -> None:
    """A mapping with a path and known keys; an anonymous entry has no roles, scopes or limits."""
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise ConfigError(f"policy: {where}: each entry needs a path")
    unknown = set(item) - {"path", "methods", "roles", "any_roles", "scopes", "websocket", *_LIMIT_KEYS}
    if unknown or (anonymous and set(item) & {"roles", "any_roles", "scopes", *_LIMIT_KEYS}):
        raise ConfigError(f"policy: {where}: unexpected key(s) {', '.join(sorted(unknown)) or 'roles/scopes/limits'}")


def _methods(item: dict[str, Any], where: str) -> frozenset[str]:
    """The entry's methods, upper-cased; none listed means every method (`*`)."""
    methods = frozenset(m.upper() for m in _strings(item, "methods", where) or ("*",))
    if methods - _METHODS:
        raise ConfigError(f"policy: {where}: unknown method(s) {', '.join(sorted(methods - _METHODS))}")
    return methods


def _check_templates(rule: Rule, where: str) -> None:
    """Every `{name}` in a role or scope template is a placeholder of the path."""
    names = set(rule.regex.groupindex)
    for template in rule.roles + rule.any_roles + rule.scopes:
        used = set(_PLACEHOLDER.findall(template))
        if used - names:
            raise ConfigError(f"policy: {where}: {template!r} uses {', '.join(sorted(used - names))} not in the path")


# Matches of recent (method, path) pairs are remembered: a gateway asks about the same few
# routes over and over. Bounded in entries and path length, so random paths cannot grow it.
MEMO_ENTRIES = 1024
MEMO_PATH_CHARS = 256
_UNSEEN = object()


class Policy:
    """Ordered rules: anonymous entries first, then routes; the first match wins."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._memo: dict[tuple[str, str], Match | None] = {}

    @classmethod
    def from_mapping(cls, data: Any) -> Policy:
        if not isinstance(data, dict) or set(data) - {"anonymous", "routes"}:
            raise ConfigError("policy: the file must be a mapping with `anonymous` and/or `routes`")
        rules = [_rule(item, f"anonymous[{i}]", True) for i, item in enumerate(data.get("anonymous") or [])]
        rules += [_rule(item, f"routes[{i}]", False) for i, item in enumerate(data.get("routes") or [])]
        return cls(rules)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"policy: cannot read {path}: {exc.strerror}") from None
        try:
            return cls.from_mapping(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise ConfigError(f"policy: {path} is not valid YAML: {exc}") from None

    def match(self, method: str, path: str) -> Match | None:
        """The first rule whose path and method fit, or None (deny)."""
        key = (method, path)
        found = self._memo.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        found = self._first_match(method, path)
        return remember(self._memo, key, found, MEMO_ENTRIES) if len(path) <= MEMO_PATH_CHARS else found

    def _first_match(self, method: str, path: str) -> Match | None:
        for rule in self.rules:
            m = rule.regex.fullmatch(path)
            if m is not None and rule.allows_method(method):
                return Match.of(rule, m.groupdict())
        return None
