"""Renders docs/cli.md from the `mltokens` click commands: `make docs` writes it,
tests/core/test_cli_reference.py checks it is current."""

from __future__ import annotations

import textwrap

import click

from token_service.cli import main
from token_service.errors import TokenServiceError

HEADER = """# `mltokens` command reference

Generated from the commands' own help by `make docs`; a test fails when it is stale.
Global options (`--config FILE`, `-v`) go before the command:
`mltokens --config /etc/mltokens.toml token list`.

A failing command prints one line on stderr and exits with status 1. Under `--json` the
error is JSON on stdout instead, `{"error": {"code": "ttl_too_long", "message": "…",
"field": "ttl"}}`: `field` names the input at fault (or is null), `code` is stable for
scripts, the `code` of an error class of `token_service/errors.py`:

{codes}
"""


def _codes() -> str:
    def walk(cls: type[TokenServiceError]) -> list[type[TokenServiceError]]:
        return [cls, *(found for sub in cls.__subclasses__() for found in walk(sub))]

    return textwrap.fill(", ".join(f"`{cls.code}`" for cls in walk(TokenServiceError)[1:]) + ".", 88)


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += _walk(command.commands[name], [*path, name])
    return found


def render() -> str:
    parts = [HEADER.replace("{codes}", _codes())]
    for path, command in _walk(main, ["mltokens"]):
        ctx = click.Context(
            command,
            info_name=" ".join(path),
            terminal_width=88,
            max_content_width=88,
            help_option_names=["-h", "--help"],
        )
        level = "#" * min(len(path) + 1, 4)
        parts.append(f"\n{level} `{' '.join(path)}`\n\n```\n{command.get_help(ctx).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
