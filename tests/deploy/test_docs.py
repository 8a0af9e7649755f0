"""docs/deployment.md, docs/security.md and docs/README.md name only what exists: files,
links and anchors, `mltokens` commands and options, `MLTOKENS_*` variables and
`ckanext.mltokens.*` options."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
import yaml

from tests.deploy.conftest import ROOT
from token_service.config import Settings
from token_service.validator.settings import ValidatorSettings

DOCS = [ROOT / "docs" / name for name in ("README.md", "deployment.md", "security.md")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name}: link to missing {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.name}: no heading for #{anchor} in {resolved.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_paths_exist(doc: Path) -> None:
    """Paths named in backticks exist; `file.py::test_name` names a test defined in that file."""
    folders = "deploy|devstack|testing|tools|tests|docs|demo|token_service|ckanext-mltokens|bench"
    for path, test in re.findall(rf"`((?:{folders})/[^`\s:]*)(?:::(\w+))?[^`\s]*`", doc.read_text()):
        assert (ROOT / path).exists(), f"{doc.name}: {path} does not exist"
        if test:
            assert re.search(rf"^(async )?def {test}\(", (ROOT / path).read_text(), re.M), (
                f"{doc.name}: no {test} in {path}"
            )


def code(text: str) -> str:
    """The fenced blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def _commands(text: str) -> list[list[str]]:
    """`mltokens WORDS...` in code: the command words and --options that follow (not `ckan mltokens ...`,
    the CKAN plugin's own commands, tested by tests/ckan)."""
    pattern = r"(?:^|[\s($])(?<!ckan )mltokens ((?:[a-z][a-z-]*|--[a-z-]+)(?: (?:[a-z][a-z-]*|--[a-z-]+))*)"
    snippets = re.sub(r"(?:-n|--namespace)[ =]mltokens\b", "", code(text))  # kubectl's namespace
    return [line.split() for line in re.findall(pattern, snippets, re.M)]


def resolve(words: list[str]) -> click.Command:
    """The command named by the leading words; the options among the rest must be its own."""
    from token_service.cli import main

    command: click.Command = main
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            break
        command = command.commands[rest.pop(0)]
    options = {opt for p in command.params for opt in p.opts}
    for word in rest:
        if word.startswith("--"):
            assert word in options, f"`mltokens {' '.join(words)}`: no option {word}"
    return command


def test_resolve_catches_what_does_not_exist() -> None:
    with pytest.raises(AssertionError):
        resolve(["keys", "rotate", "--now"])
    from token_service.cli import main

    assert resolve(["no-such-command"]) is main


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_mltokens_commands_and_options_exist(doc: Path) -> None:
    """`mltokens X ... --opt` in the docs' code: X is a command of the CLI, --opt its option."""
    from token_service.cli import main

    for words in _commands(doc.read_text()):
        assert words[0] in main.commands, f"{doc.name}: `mltokens {' '.join(words)}` is no command"
        resolve(words)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_settings_named_exist(doc: Path) -> None:
    text = doc.read_text()
    known = {"MLTOKENS_CONFIG"} | {"MLTOKENS_" + f.name.upper() for f in dataclasses.fields(Settings)}
    known |= {"MLTOKENS_VALIDATOR_" + f.name.upper() for f in dataclasses.fields(ValidatorSettings)}
    for name in re.findall(r"\bMLTOKENS_[A-Z_]+\b", text):
        if name.endswith("_"):  # a prefix such as MLTOKENS_VALIDATOR_*
            assert any(k.startswith(name) for k in known), name
            continue
        assert name in known, f"{doc.name}: {name} is not a setting"
    declaration = yaml.safe_load((ROOT / "ckanext-mltokens/ckanext/mltokens/config_declaration.yaml").read_text())
    options = {o["key"] for group in declaration["groups"] for o in group["options"]}
    options |= {"ckanext.mltokens." + f.name for f in dataclasses.fields(Settings)}
    for name in re.findall(r"\bckanext\.mltokens\.[a-z_]+\b", text):
        assert name in options, f"{doc.name}: {name} is not a plugin option"
