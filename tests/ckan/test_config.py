"""`ckanext.mltokens.*` options: declared for every token_service setting, with the same defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ckan.plugins as plugins
import ckan.plugins.toolkit as tk
import pytest
import yaml
from ckanext.mltokens import service

from token_service.config import Settings
from token_service.errors import ConfigError

with_plugins = pytest.mark.usefixtures("with_plugins")

DECLARATION = Path(service.__file__).with_name("config_declaration.yaml")
PLUGIN_ONLY = {
    "model_api_url",
    "role_prefixes",
    "expiry_warning",
    "public_token_endpoint",
    "access_mode",
    "read_operations",
    "leak_report_secret",
    "leak_rate_limit",
    "expiry_notices",
    "unused_after",
}


def declared() -> dict[str, object]:
    groups = yaml.safe_load(DECLARATION.read_text())["groups"]
    return {o["key"].removeprefix(service.PREFIX): o.get("default") for g in groups for o in g["options"]}


def test_every_setting_is_declared_with_its_default_and_nothing_else() -> None:
    options = declared()
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(options) - PLUGIN_ONLY == fields
    raw = {name: value for name, value in options.items() if name in fields and name != "database_url"}
    assert Settings.from_mapping(raw) == Settings(database_url=Settings().database_url)


@with_plugins
def test_database_url_defaults_to_ckans_and_options_map_onto_settings() -> None:
    current = service.settings()
    assert current.database_url == tk.config["sqlalchemy.url"]
    assert current.issuer_url == "http://issuer.test/local"
    assert current.max_tokens_per_owner == 3


@with_plugins
@pytest.mark.ckan_config("ckanext.mltokens.max_ttl", "2h")
@pytest.mark.ckan_config("ckanext.mltokens.default_ttl", "1h")
@pytest.mark.ckan_config("ckanext.mltokens.database_url", "postgresql://postgres@127.0.0.1:5432/elsewhere")
def test_options_override_the_defaults() -> None:
    current = service.settings()
    assert (current.max_ttl.total_seconds(), current.default_ttl.total_seconds()) == (7200, 3600)
    assert current.database_url.endswith("/elsewhere")


@pytest.mark.ckan_config("ckanext.mltokens.max_ttl", "forever")
def test_a_bad_option_stops_the_plugin_from_loading() -> None:
    try:
        with pytest.raises(ConfigError, match="max_ttl: 'forever' is not a duration"):
            plugins.load("mltokens")
    finally:
        plugins.unload_all()


@pytest.mark.ckan_config("ckanext.mltokens.public_token_endpoint", "sso.example.org/token")
def test_a_public_token_endpoint_that_is_no_url_stops_the_plugin_from_loading() -> None:
    try:
        with pytest.raises(ConfigError, match="public_token_endpoint: must be an http"):
            plugins.load("mltokens")
    finally:
        plugins.unload_all()


@pytest.mark.ckan_config("ckanext.mltokens.access_mode", "everybody")
def test_an_unknown_access_mode_stops_the_plugin_from_loading() -> None:
    try:
        with pytest.raises(ConfigError, match="access_mode: 'everybody' is not one of ckan, issuer, both"):
            plugins.load("mltokens")
    finally:
        plugins.unload_all()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("expiry_notices", "7d soon", "expiry_notices: 'soon' is not a duration"),
        ("expiry_notices", "7d 0s", "every lead time must be positive"),
        ("unused_after", "2h", "unused_after: must be at least 1d"),
    ],
)
def test_bad_notice_and_unused_options_stop_the_plugin_from_loading(
    key: str, value: str, message: str, ckan_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ckan_config, service.PREFIX + key, value.split() if key == "expiry_notices" else value)
    try:
        with pytest.raises(ConfigError, match=message):
            plugins.load("mltokens")
    finally:
        plugins.unload_all()


@with_plugins
def test_ckan_config_declaration_documents_every_option(cli) -> None:
    from ckan.cli.cli import ckan

    result = cli.invoke(ckan, ["config", "declaration", "mltokens"])
    assert result.exit_code == 0, result.output
    for name, default in declared().items():
        shown = " ".join(default) if isinstance(default, list) else default
        assert f"{service.PREFIX}{name} = {shown}".rstrip() in result.output
