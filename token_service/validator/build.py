"""Which of the validator's hot modules run compiled, and which as pure Python.

setup.py compiles the modules of `COMPILED` with Cython 3 (pure-Python mode: these `.py`
files are the only source) when Cython and a C compiler are present; otherwise, or when a
build fails, they run as the pure Python they are, with the same behaviour
(docs/validator.md, "The compiled build"). The list is what measurably pays
(docs/benchmarks.md, "The cold path compiled"). `python -m token_service.validator.build`
prints the state of each; `mltokens serve` logs it at start.

This module imports nothing of the package: setup.py reads `COMPILED` from it before
anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import sys

PACKAGE = "token_service.validator"
COMPILED = ("jwt_fast", "decision", "revocations", "policy", "bearer", "memo", "answers", "protocol", "digests")
# The C libraries a compiled module links (its `.pxd` calls them; their headers are needed to build it).
LIBRARIES = {"digests": ("crypto",)}
# An extension is stale when its source is newer by more than this: an edit after the last
# build (installers write a wheel's files within a second or so of each other).
STALE_AFTER_SECONDS = 2.0

COMPILED_STATE = "compiled"
PURE_STATE = "pure Python"
STALE_STATE = "stale"


def state(origin: str | None) -> str:
    """`compiled`, `pure Python`, or `stale` for the file a module is imported from: stale is an
    extension older than the `.py` beside it or its `.pxd` (declarations for Cython), an edit since
    the last build (rebuild with `python setup.py build_ext --inplace`), which would run the old code."""
    if not origin or not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return PURE_STATE
    directory, name = os.path.split(origin)
    built = os.path.getmtime(origin) + STALE_AFTER_SECONDS
    for suffix in (".py", ".pxd"):
        source = os.path.join(directory, name.split(".", 1)[0] + suffix)
        if os.path.exists(source) and os.path.getmtime(source) > built:
            return STALE_STATE
    return COMPILED_STATE


def states() -> dict[str, str]:
    """Each module of `COMPILED` by its state (`state`), found without importing it; and as stale,
    an extension left in the package for a module no longer in `COMPILED` (imported before its `.py`)."""
    found = {}
    for module in COMPILED:
        spec = importlib.util.find_spec(f"{PACKAGE}.{module}")
        found[module] = state(spec.origin if spec is not None else None)
    package = importlib.util.find_spec(PACKAGE)
    directories = (package.submodule_search_locations or ()) if package is not None else ()
    for directory in directories:
        for name in sorted(os.listdir(directory)):
            module = name.split(".", 1)[0]
            if name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) and module not in COMPILED:
                found[module] = STALE_STATE
    return found


def summary() -> str:
    """One line for logs: which modules run compiled, which as pure Python, which are stale."""
    by_state: dict[str, list[str]] = {}
    for module, found in states().items():
        by_state.setdefault(found, []).append(module)
    return "; ".join(f"{found}: {', '.join(modules)}" for found, modules in by_state.items())


def main(argv: list[str] | None = None) -> None:
    """Print each module's state; with `--require`, exit 1 unless every one is compiled."""
    parser = argparse.ArgumentParser(description="Which of the validator's hot modules run compiled.")
    parser.add_argument("--require", action="store_true", help="exit 1 unless every module is compiled and current")
    args = parser.parse_args(argv)
    found = states()
    for module, module_state in found.items():
        print(f"{PACKAGE}.{module}: {module_state}")
    if args.require and set(found.values()) != {COMPILED_STATE}:
        sys.exit(1)


if __name__ == "__main__":
    main()
