"""Which implementation of the validator's hot modules is loaded: compiled (Cython) or pure Python.

`make test` (CI) sets MLTOKENS_TEST_REQUIRE_COMPILED=1 after `.ci/install` built the modules:
there a pure-Python module imported silently (a build that fell back, a missing `.so`) fails.
Elsewhere pure Python is a supported fallback and the other tests run on whichever is loaded.
A stale build (a `.py` edited after its extension was built) fails everywhere: it would run
the old code under the new tests.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

from token_service.validator import build

REQUIRED = os.environ.get("MLTOKENS_TEST_REQUIRE_COMPILED") == "1"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.parametrize("module", build.COMPILED)
def test_the_state_reported_is_the_implementation_imported(module: str) -> None:
    imported = importlib.import_module(f"{build.PACKAGE}.{module}")
    assert imported.__file__ is not None
    compiled = imported.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    reported = build.states()[module]
    print(f"{build.PACKAGE}.{module}: {reported} ({imported.__file__})")
    assert reported != build.STALE_STATE, f"{module}: rebuild with `python setup.py build_ext --inplace`"
    assert (reported == build.COMPILED_STATE) == compiled


@pytest.mark.skipif(not REQUIRED, reason="MLTOKENS_TEST_REQUIRE_COMPILED is not 1: pure Python is accepted")
def test_every_hot_module_is_compiled_where_the_build_is_required() -> None:
    assert build.states() == dict.fromkeys(build.COMPILED, build.COMPILED_STATE)


def test_an_extension_older_than_its_source_is_stale_and_a_source_alone_is_pure(tmp_path: Path) -> None:
    source, extension = tmp_path / "jwt_fast.py", tmp_path / f"jwt_fast{SUFFIX}"
    source.write_text("")
    extension.write_bytes(b"")
    assert build.state(str(source)) == build.PURE_STATE
    assert build.state(None) == build.PURE_STATE
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(extension, (1_000_000 + 60, 1_000_000 + 60))
    assert build.state(str(extension)) == build.COMPILED_STATE
    os.utime(source, (1_000_000 + 61, 1_000_000 + 61))  # written within a second of each other: not stale
    assert build.state(str(extension)) == build.COMPILED_STATE
    os.utime(source, (1_000_000 + 600, 1_000_000 + 600))  # edited after the build
    assert build.state(str(extension)) == build.STALE_STATE
    source.unlink()  # an installed wheel may carry only the extension
    assert build.state(str(extension)) == build.COMPILED_STATE
    declarations = tmp_path / "jwt_fast.pxd"  # Cython's declarations beside it, edited after the build
    declarations.write_text("")
    os.utime(declarations, (1_000_000 + 600, 1_000_000 + 600))
    assert build.state(str(extension)) == build.STALE_STATE


def test_no_extension_is_left_for_a_module_not_compiled() -> None:
    """An extension of a module dropped from `COMPILED` would still be imported, before its `.py`."""
    assert set(build.states()) == set(build.COMPILED), build.states()


def test_a_leftover_extension_is_reported_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mltokens_build_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jwt_fast.py").write_text("")
    (package / f"app{SUFFIX}").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(build, "PACKAGE", "mltokens_build_probe")
    assert build.states() == {**dict.fromkeys(build.COMPILED, build.PURE_STATE), "app": build.STALE_STATE}


def test_the_summary_names_every_module_once_by_its_state() -> None:
    summary = build.summary()
    for module in build.COMPILED:
        assert summary.count(f" {module}") == 1, summary
    assert all(part.split(": ")[0] in build.states().values() for part in summary.split("; "))


def test_require_exits_1_unless_every_module_is_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    all_compiled = set(build.states().values()) == {build.COMPILED_STATE}
    if all_compiled:
        build.main(["--require"])
    else:
        with pytest.raises(SystemExit) as exc:
            build.main(["--require"])
        assert exc.value.code == 1
    out = capsys.readouterr().out
    assert [line.split(": ")[0] for line in out.splitlines()] == [f"{build.PACKAGE}.{m}" for m in build.COMPILED]


def test_the_compiled_protocol_keeps_its_state_in_declared_fields() -> None:
    """protocol.pxd makes `DecisionProtocol` an extension type whose attributes are C fields (what makes
    it pay compiled, docs/benchmarks.md): an instance has no `__dict__`, and takes no attribute undeclared."""
    from token_service.validator import protocol

    if build.states()["protocol"] != build.COMPILED_STATE:
        pytest.skip("pure Python: DecisionProtocol is a plain class")
    assert "__dict__" not in dir(protocol.DecisionProtocol)
    with pytest.raises(AttributeError):
        protocol.DecisionProtocol.__new__(protocol.DecisionProtocol).undeclared = 1
