"""The distribution's metadata is true and its wheel ships what the code needs.

The wheel is built from a copy of the tracked files (the worktree stays clean), offline
and without build isolation: the virtualenv's setuptools builds it.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.machinery
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT
from token_service.validator import build


def _setup_keywords() -> dict[str, object]:
    """The literal keyword arguments of setup() in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:  # computed (find_packages(...), lists of requirements)
            continue
    return out


def test_metadata_requires_the_python_the_code_needs() -> None:
    """tomllib and datetime.UTC are 3.11: python_requires, ruff's target and the classifiers say so."""
    keywords = _setup_keywords()
    assert keywords["python_requires"] == ">=3.11"
    classifiers = keywords["classifiers"]
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    versions = [c.rsplit(":: ", 1)[1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")]
    assert versions and min(tuple(map(int, v.split("."))) for v in versions) == (3, 11)
    ruff = tomllib.loads((ROOT / "ruff.toml").read_text())
    assert ruff["target-version"] == "py311"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's output)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the worktree is not shipped
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("mltokens-*.whl")
    return wheel, result.stdout + result.stderr


def test_wheel_ships_the_migrations(built: tuple[Path, str]) -> None:
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = ROOT / "token_service" / "store" / "migrations"
    expected = {str(p.relative_to(ROOT)) for p in migrations.rglob("*") if p.suffix in (".py", ".mako")}
    assert "token_service/store/migrations/versions/0001_initial.py" in expected
    assert expected <= names, sorted(expected - names)


def test_wheel_metadata_requires_python_311(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(zf.read(meta).decode())
    assert metadata["Requires-Python"] == ">=3.11"


def test_build_warns_of_no_package_left_out(built: tuple[Path, str]) -> None:
    _, output = built
    assert "absent from the `packages` configuration" not in output
    assert "Package would be ignored" not in output


def test_wheel_ships_the_compiled_modules_beside_their_sources(built: tuple[Path, str]) -> None:
    """Built where Cython and a C compiler are (this virtualenv): each hot module compiled, and its
    `.py` too, the source and the fallback (docs/validator.md, "The compiled build")."""
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in build.COMPILED:
        assert f"token_service/validator/{module}.py" in names
        assert f"token_service/validator/{module}{importlib.machinery.EXTENSION_SUFFIXES[0]}" in names, module
