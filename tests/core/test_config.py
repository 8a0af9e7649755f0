"""Settings: file, environment, defaults and clear errors."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from token_service.config import MAX_DURATION, Settings, format_duration, parse_duration
from token_service.errors import ConfigError


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90d", 90 * 86400),
        ("12h", 43200),
        ("30m", 1800),
        ("45s", 45),
        ("2w", 1209600),
        ("3600", 3600),
        (" 5 m ", 300),
        (0, 0),
        ("1.5h", 5400),
        ("500ms", 0.5),
        (2.5, 2.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "ten days", "1,5d", "-3d", "3y", "d", ".5s", "5 ms s"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text, "max_ttl")


@pytest.mark.parametrize(
    "value",
    ["1000000000d", "36501d", "1" * 400, 10**30, 10**400, float("inf"), timedelta(days=999_999_999)],
    ids=["1000000000d", "36501d", "400 digits", "1e30", "1e400", "inf", "timedelta.max"],
)
def test_absurd_durations_are_refused_with_the_maximum(value):
    """They overflowed in timedelta (OverflowError) instead of a clear error."""
    with pytest.raises(ConfigError, match=r"ttl: at most 36500d"):
        parse_duration(value, "ttl")


@pytest.mark.parametrize("value", [float("nan"), -(10**400), float("-inf")], ids=["nan", "-1e400", "-inf"])
def test_durations_that_are_not_numbers_or_negative(value):
    with pytest.raises(ConfigError):
        parse_duration(value, "ttl")


def test_the_longest_duration_is_accepted():
    assert parse_duration("36500d") == MAX_DURATION == timedelta(days=36500)


def test_defaults_are_sane():
    s = Settings()
    s.check()
    assert s.max_ttl == timedelta(days=90) and s.issuer == "local" and s.signing_algorithm == "RS256"


def test_environment_overrides_file(tmp_path):
    path = tmp_path / "mltokens.toml"
    path.write_text(
        '[mltokens]\nmax_ttl = "30d"\ndefault_ttl = "7d"\naudience = "from-file"\ngrantable_roles = ["a", "b"]\n'
    )
    s = Settings.load(
        env={"MLTOKENS_CONFIG": str(path), "MLTOKENS_AUDIENCE": "from-env", "MLTOKENS_MAX_TOKENS_PER_OWNER": "7"}
    )
    assert s.max_ttl == timedelta(days=30) and s.default_ttl == timedelta(days=7)
    assert s.audience == "from-env" and s.max_tokens_per_owner == 7 and s.grantable_roles == ("a", "b")
    assert Settings.load(env={"MLTOKENS_GRANTABLE_ROLES": "x, y,,z"}).grantable_roles == ("x", "y", "z")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"issuer": "okta"}, "issuer"),
        ({"database_url": "mysql://x"}, "database_url"),
        ({"max_ttl": "forever"}, "max_ttl"),
        ({"default_ttl": "100d"}, "default_ttl"),
        ({"max_tokens_per_owner": "many"}, "max_tokens_per_owner"),
        ({"max_tokens_per_owner": 0}, "max_tokens_per_owner"),
        ({"signing_algorithm": "HS256"}, "signing_algorithm"),
        ({"issuer_url": "ftp://x"}, "issuer_url"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_bad_settings_name_the_setting(raw, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(raw)
    assert message in caught.value.message


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_ttl = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(bad, env={})


def test_describe_masks_secrets():
    rows = {env: value for env, value, _ in Settings(key_passphrase="hunter2").describe()}
    assert rows["MLTOKENS_KEY_PASSPHRASE"] == "***" and rows["MLTOKENS_MAX_TTL"] == "90d"


@pytest.mark.parametrize("seconds", [0, 0.000005, 0.5, 1.5, 30, 90, 3600, 5400, 86400, 2592000, 31536000, 1e9])
def test_durations_are_shown_as_written_and_read_back(seconds):
    value = timedelta(seconds=seconds)
    shown = format_duration(value)
    assert parse_duration(shown) == value
    assert re.fullmatch(r"\d+(ms|[smhd])|\d+\.\d+s", shown), shown


def test_other_parts_tables_in_the_same_file_are_left_to_them(tmp_path):
    path = tmp_path / "all.toml"
    path.write_text('audience = "top"\n\n[validator]\nport = 1\n')
    assert Settings.load(path, env={}).audience == "top"
