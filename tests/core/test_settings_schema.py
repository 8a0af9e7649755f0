"""One settings mechanism for the core and the validator (issue 18, item 3)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from token_service.config import Settings
from token_service.errors import ConfigError
from token_service.settings_schema import PARSERS, declared
from token_service.validator.settings import ValidatorSettings

SECTIONS = [Settings, ValidatorSettings]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.__name__)
def test_every_setting_is_declared_with_a_doc_and_a_type_the_loader_reads(section):
    """The validator's settings were bare defaults: docs/configuration.md had no meaning for them."""
    for f in dataclasses.fields(section):
        assert declared(f).doc.strip(), f"{section.__name__}.{f.name} has no doc"
        assert str(f.type) in PARSERS, f"{section.__name__}.{f.name}: no parser for {f.type}"


def test_the_core_settings_load_without_importing_the_validator():
    """config.check_environment imported validator.settings, which imports config: an import circle."""
    probe = (
        "import sys\nfrom token_service.config import Settings\nSettings.load(env={'MLTOKENS_AUDIENCE': 'a'})\n"
        "print(sorted(m for m in sys.modules if m.startswith('token_service.validator')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_program_of_the_core_alone_leaves_the_validators_variables_to_it():
    """Without the validator imported, its variables are not refused as unknown (they were
    known through the import circle); a misspelled core variable still is."""
    probe = (
        "import sys\nfrom token_service.config import Settings\n"
        "Settings.load(env={'MLTOKENS_VALIDATOR_HOST': '0.0.0.0', 'MLTOKENS_AUDIENCE': 'a'})\n"
        "try:\n    Settings.load(env={'MLTOKENS_AUDIENSE': 'a'})\nexcept Exception as exc:\n    print(exc)\n"
        "print('token_service.validator.settings' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "unknown environment variable MLTOKENS_AUDIENSE; did you mean MLTOKENS_AUDIENCE?",
        "False",
    ]


def test_one_environment_check_for_both_sections():
    """A variable of either section passes either loader; a typo in either is refused by both."""
    env = {"MLTOKENS_VALIDATOR_POLICY_FILE": "p.yaml", "MLTOKENS_AUDIENCE": "a", "MLTOKENS_VALIDATOR_PORT": "1"}
    assert Settings.load(env=env).audience == "a"
    assert ValidatorSettings.load(env=env).port == 1
    for typo in ("MLTOKENS_AUDIENSE", "MLTOKENS_VALIDATOR_PROT"):
        for section in SECTIONS:
            with pytest.raises(ConfigError, match=f"unknown environment variable {typo}; did you mean"):
                section.load(env=env | {typo: "x"})


def test_validator_durations_read_like_the_cores(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[mltokens]\nleeway = "1m"\n[validator]\npolicy_file = "p.yaml"\nredis_timeout = "250ms"\n')
    s = ValidatorSettings.load(path, env={"MLTOKENS_VALIDATOR_RESYNC_INTERVAL": "2h"})
    assert (s.leeway, s.redis_timeout, s.resync_interval) == (60.0, 0.25, 7200.0)


CORE = Settings.from_mapping({"issuer_url": "http://issuer.test"})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"workers": 0}, "validator.workers: must be at least 1"),
        ({"max_token_bytes": 511}, "validator.max_token_bytes: must be at least 512"),
        ({"grpc_port": 70000}, "validator.grpc_port: a TCP port"),
        ({"grpc_port": 8902}, "validator.grpc_port: must differ from port"),
        ({"redis_url": "http://r"}, "validator.redis_url: a redis://"),
        ({"redis_url": "redis://r", "redis_timeout": 0}, "validator.redis_timeout: must be above zero"),
        ({"audiences": ""}, "validator.audiences: name at least one audience"),
        ({"issuers": ""}, "validator.issuers: name at least one issuer URL"),
    ],
)
def test_each_validator_check_names_its_setting(raw, message):
    if raw.get("grpc_port") == 8902:
        pytest.importorskip("grpc")
    with pytest.raises(ConfigError, match=re.escape(message)):
        ValidatorSettings.from_mapping({"policy_file": "p.yaml", **raw}, CORE)


@pytest.mark.parametrize("text", ['mltokens = "x"\n', 'validator = 3\n[mltokens]\naudience = "a"\n'])
def test_a_section_that_is_not_a_table_is_a_clear_error(tmp_path, text):
    """It was a ValueError or TypeError (a traceback) from dict.update."""
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be a table"):
        ValidatorSettings.load(path, env={})
