"""The recognisable token format: a fixed prefix (`mlt_` by default) in front of the JWT.

Secret scanners (GitHub's, gitleaks, trufflehog) and people recognise a string by its
prefix, as they do OpenAI's `sk-proj-` or Hugging Face's `hf_` tokens. The prefix is no
part of the signed JWT: the lifecycle adds it when it hands a token out, and whatever
reads a token (the validator, `mltokens check`, the leak reporting endpoints) takes it
off before parsing. docs/security.md ("Recognisable tokens") gives the regular
expression for secret scanners; `scanner_pattern` is that expression.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "mlt_"
PREFIX_PATTERN = re.compile(r"(?:[A-Za-z0-9]{1,15}_)?")
"""A prefix: letters and digits ending in `_` (at most 16 characters), or none at all."""


def check_prefix(value: str) -> str | None:
    """The setting's own check (settings_schema.Check)."""
    if PREFIX_PATTERN.fullmatch(value):
        return None
    return "letters and digits ending in _ (at most 16 characters, e.g. mlt_), or empty for no prefix"


def with_prefix(jwt: str, prefix: str) -> str:
    """The token as handed out."""
    return prefix + jwt


def split_prefix(token: str, prefix: str) -> tuple[str, bool]:
    """(the JWT, whether it carried the prefix); a token without it is returned as it is."""
    if prefix and token.startswith(prefix):
        return token[len(prefix) :], True
    return token, False


def scanner_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """The regular expression that finds handed-out tokens in text (docs/security.md).

    A JWT's header and payload are JSON objects, so both base64url segments start with
    `eyJ` (`{"`); the signature is at least 43 characters (256 bits). `\\b` keeps a longer
    word that merely ends in the prefix from matching. No look-arounds: RE2 (gitleaks,
    GitHub's custom patterns) reads it as Python does.
    """
    b64 = "[A-Za-z0-9_-]"
    return rf"\b{re.escape(prefix)}eyJ{b64}+\.eyJ{b64}+\.{b64}{{43,}}"
