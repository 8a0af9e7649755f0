"""How settings are declared and read: one mechanism for the core's and the validator's.

A part's settings are a frozen dataclass deriving from `Section`, which names the part's
environment prefix and TOML table. Each field is declared once with `setting()`: its
default, its type (the annotation chooses the parser: `timedelta`, `float` seconds, `int`,
`str`, `tuple[str, ...]`), its own check, its doc and whether it is secret. `Section.read`
is the one loader of file and environment; it first refuses any `MLTOKENS_*` variable that
names no setting of any section, as unknown TOML keys are refused.

Sections register themselves when their class is defined, so this module imports none of
them: token_service.config (the core) and token_service.validator.settings import this
module, and the core never imports the validator. The `mltokens` CLI and the validator's
servers import both sections, so they check every variable; a program that imports only the
core leaves `MLTOKENS_VALIDATOR_*` to the validator, which checks them when it loads.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

from .errors import ConfigError

ENV_PREFIX = "MLTOKENS_"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
# Under MLTOKENS_, beside the settings: the file's name, and prefixes the product never reads,
# kept for the test suite (MLTOKENS_TEST_*) and the demo launcher (MLTOKENS_DEMO_*).
TOOL_PREFIXES = (ENV_PREFIX + "TEST_", ENV_PREFIX + "DEMO_")
CORE_TABLE = "mltokens"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhdw])?\s*$")
_UNITS = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=36500)
"""No duration anywhere (a setting, a token's lifetime) may be longer: 100 years."""


class DurationTooLong(ConfigError):
    """A well-formed duration beyond MAX_DURATION (or beyond what a float holds)."""

    code = "duration_too_long"


def parse_duration(value: Any, name: str = "duration") -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `500ms`, `2w`, `1.5h` or a number of seconds, at most MAX_DURATION."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf if value > 0 else -math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"{name}: {str(value)[:40]!r} is not a duration (e.g. 90d, 12h, 30m, 45s, 500ms)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(seconds):
        raise ConfigError(f"{name}: not a number")
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise DurationTooLong(f"{name}: at most {MAX_DURATION.days}d (100 years)")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A duration as a user writes it (`30d`, `12h`, `500ms`); parse_duration reads it back."""
    ms = value / timedelta(milliseconds=1)
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNITS[unit] * 1000
        if ms % size == 0:
            return f"{int(ms // size)}{unit}"
    return f"{value.total_seconds():.6f}".rstrip("0") + "s"  # microseconds, the finest a timedelta holds


def parse_seconds(value: Any, name: str) -> float:
    """A duration in seconds (the validator's durations are floats, read per request)."""
    return parse_duration(value, name).total_seconds()


def parse_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None


def parse_list(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"{name}: expected a list or a comma-separated string")
    return tuple(v for v in items if v)


# The parser of each annotation a setting may have (both modules use postponed annotations).
PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "str": lambda value, name: str(value),
    "int": parse_int,
    "float": parse_seconds,
    "timedelta": parse_duration,
    "tuple[str, ...]": parse_list,
}

Check = Callable[[Any], "str | None"]
"""A setting's own check: the value in, a complaint (without the name) or None out."""


@dataclass(frozen=True)
class Setting:
    """What a field's metadata says about it, beside its default and type."""

    doc: str
    secret: bool = False
    check: Check | None = None


def setting(default: Any = MISSING, doc: str = "", *, secret: bool = False, check: Check | None = None) -> Any:
    """Declare a setting: default (none: the section fills it in), doc, secrecy, own check."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"setting": Setting(doc, secret, check)})


def declared(f: Field[Any]) -> Setting:
    return f.metadata["setting"]


def _fields(section: Section | type[Section]) -> tuple[Field[Any], ...]:
    return fields(section)  # type: ignore[arg-type]  # every Section subclass is a dataclass


# Checks shared by both sections.
def at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}"


def above_zero(value: float) -> str | None:
    return None if value > 0 else "must be above zero"


def http_url(value: str) -> str | None:
    return None if value.startswith(("http://", "https://")) else "must be an http(s) URL"


SECTIONS: list[type[Section]] = []
"""Every section declared so far, for the environment check."""
PART_PREFIXES = {"validator": ENV_PREFIX + "VALIDATOR_"}
"""The environment prefix of every part's table, imported in this process or not: a program that
imports only the core leaves the variables under another part's prefix to that part."""


class Section:
    """Base of a part's settings dataclass: `class S(Section, env_prefix=…, table=…)`.

    `table` None is the core: keys under `[mltokens]`, or at the top level of the file.
    Another part reads its own table; a file that has it puts the core under `[mltokens]`.
    """

    env_prefix: ClassVar[str]
    table: ClassVar[str | None]

    def __init_subclass__(cls, *, env_prefix: str, table: str | None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if table is not None and PART_PREFIXES.get(table) != env_prefix:
            raise TypeError(f"{cls.__name__}: name table {table!r} and its prefix in PART_PREFIXES")
        cls.env_prefix, cls.table = env_prefix, table
        SECTIONS.append(cls)

    @classmethod
    def label(cls, name: str) -> str:
        """A setting's name in messages: `max_ttl`, `validator.workers`."""
        return f"{cls.table}.{name}" if cls.table else name

    @classmethod
    def environment_names(cls) -> set[str]:
        return {cls.env_prefix + f.name.upper() for f in _fields(cls)}

    @classmethod
    def read(cls, path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> dict[str, Any]:
        """The raw values of this section: its part of the file, overridden by the environment."""
        check_environment(env)
        path = path or env.get(CONFIG_VARIABLE)
        raw = cls._from_file(read_file(Path(path))) if path else {}
        for f in _fields(cls):
            key = cls.env_prefix + f.name.upper()
            if key in env:
                raw[f.name] = env[key]
        return raw

    @classmethod
    def _from_file(cls, data: dict[str, Any]) -> dict[str, Any]:
        for table in (CORE_TABLE, cls.table):
            if table in data and not isinstance(data[table], dict):
                raise ConfigError(f"config file: {table} must be a table ([{table}])")
        if cls.table is None:
            if CORE_TABLE in data:
                return dict(data[CORE_TABLE])
            # Top-level keys are ours; other tables ([validator], …) belong to other parts.
            return {k: v for k, v in data.items() if not isinstance(v, dict)}
        if cls.table in data and CORE_TABLE not in data:
            raise ConfigError(f"with a [{cls.table}] section, put the core settings under [{CORE_TABLE}]")
        return dict(data.get(cls.table, {}))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Each raw value parsed by its field's type; unknown names refused."""
        known = {f.name: f for f in _fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            part = f"{cls.table} " if cls.table else ""
            raise ConfigError(f"unknown {part}setting(s): {', '.join(unknown)}")
        return {name: PARSERS[str(known[name].type)](value, cls.label(name)) for name, value in raw.items()}

    def check_each(self) -> None:
        """Each setting's own check, in declaration order."""
        for f in _fields(self):
            rule = declared(f).check
            complaint = rule(getattr(self, f.name)) if rule else None
            if complaint:
                raise ConfigError(f"{self.label(f.name)}: {complaint}")

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, current value, doc) for each setting; secrets masked."""
        rows = []
        for f in _fields(self):
            value = getattr(self, f.name)
            shown = "***" if declared(f).secret and value else show(value)
            rows.append((self.env_prefix + f.name.upper(), shown, declared(f).doc))
        return rows

    def replace(self, **changes: Any) -> Self:
        return replace(self, **changes)  # type: ignore[type-var]


def show(value: Any) -> str:
    """A value as a user writes it in the file or the environment."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse a `MLTOKENS_*` variable that names no setting: a typo must not be ignored silently."""
    known = {CONFIG_VARIABLE}.union(*(section.environment_names() for section in SECTIONS))
    absent = tuple(prefix for table, prefix in PART_PREFIXES.items() if table not in {s.table for s in SECTIONS})
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(TOOL_PREFIXES + absent):
            suffixes = {k[len(ENV_PREFIX) :]: k for k in known}
            nearest = difflib.get_close_matches(name[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.6)
            hint = f"; did you mean {suffixes[nearest[0]]}?" if nearest else "; `mltokens config` lists the settings"
            raise ConfigError(f"unknown environment variable {name}{hint}")


def read_file(path: Path) -> dict[str, Any]:
    """The whole TOML file; each section takes its part."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
