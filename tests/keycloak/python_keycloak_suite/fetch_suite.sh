#!/usr/bin/env bash
# Place python-keycloak's own tests/ (for the installed python-keycloak version) in
# .cache/python-keycloak-tests/tests/, for tests/keycloak/python_keycloak_suite to run against the
# Keycloak test server. Never commits or vendors the upstream code.
#
# Sources, in order:
#   1. the python-keycloak sdist from PyPI, if it ships tests/ (7.x sdists do not:
#      they are built by poetry with only src/keycloak, so this finds nothing today);
#   2. $PYTHON_KEYCLOAK_SRC: a python-keycloak git repository (bare or not) or an
#      unpacked source tree of the same version; from a git repository the tests
#      are taken at the tag v<version>. Unset, it defaults to the workplace's
#      third-party folder, ../shared/third_party/python-keycloak-<version> beside the
#      checkout (or /work/shared/... for a clone elsewhere), when that exists.
# When neither has the tests, this says so and exits 0: the compat test then skips,
# or fails when MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE=1.
#
# Usage: tests/keycloak/python_keycloak_suite/fetch_suite.sh [python]   (default .venv/bin/python)
set -euo pipefail

root="$(cd "$(dirname "$0")/../../.." && pwd)"
python="${1:-$root/.venv/bin/python}"
dest="$root/.cache/python-keycloak-tests"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("python-keycloak"))')"

if [[ -f "$dest/VERSION" && "$(cat "$dest/VERSION")" == "$version" && -d "$dest/tests" ]]; then
    echo "python-keycloak $version tests already in $dest"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
found=""

# 1. PyPI sdist (checked once per version: a marker remembers an sdist without tests).
marker="$dest/.sdist-without-tests"
if [[ -f "$marker" && "$(cat "$marker")" == "$version" ]]; then
    echo "the PyPI sdist of python-keycloak $version has no tests/ (checked before)"
elif "$python" -m pip download --quiet --no-deps --no-binary :all: \
        --dest "$work/sdist" "python-keycloak==$version" >/dev/null 2>&1; then
    tar -xzf "$work"/sdist/python_keycloak-*.tar.gz -C "$work/sdist"
    candidate="$(echo "$work"/sdist/python_keycloak-*/tests)"
    if [[ -f "$candidate/conftest.py" ]]; then
        found="$candidate"
        echo "using tests/ from the PyPI sdist of python-keycloak $version"
    else
        echo "the PyPI sdist of python-keycloak $version has no tests/"
        mkdir -p "$dest"
        echo "$version" >"$marker"
    fi
fi

# 2. A local python-keycloak repository or source tree.
if [[ -z "${PYTHON_KEYCLOAK_SRC:-}" ]]; then
    for candidate in "$root/../shared/third_party/python-keycloak-$version" \
                     "/work/shared/third_party/python-keycloak-$version"; do
        if [[ -f "$candidate/tests/conftest.py" ]]; then
            PYTHON_KEYCLOAK_SRC="$candidate"
            break
        fi
    done
fi
if [[ -z "$found" && -n "${PYTHON_KEYCLOAK_SRC:-}" ]]; then
    src="$PYTHON_KEYCLOAK_SRC"
    if git --git-dir="$src" rev-parse --verify --quiet "v$version^{commit}" >/dev/null 2>&1 \
        || git -C "$src" rev-parse --verify --quiet "v$version^{commit}" >/dev/null 2>&1; then
        gitdir="$src"
        git --git-dir="$src" rev-parse >/dev/null 2>&1 || gitdir="$(git -C "$src" rev-parse --git-dir)"
        [[ "$gitdir" = /* ]] || gitdir="$src/$gitdir"
        mkdir -p "$work/git"
        git --git-dir="$gitdir" archive "v$version" tests | tar -x -C "$work/git"
        found="$work/git/tests"
        echo "using tests/ at tag v$version of $src"
    elif [[ -f "$src/tests/conftest.py" ]]; then
        found="$src/tests"
        echo "using tests/ of the source tree $src (assumed to be python-keycloak $version)"
    else
        echo "PYTHON_KEYCLOAK_SRC=$src has neither tag v$version nor tests/conftest.py"
    fi
fi

if [[ -z "$found" ]]; then
    echo "python-keycloak $version tests are not available; set PYTHON_KEYCLOAK_SRC to a" \
         "python-keycloak checkout to run the upstream compatibility suite"
    exit 0
fi

rm -rf "$dest/tests" "$dest/VERSION"
mkdir -p "$dest"
cp -R "$found" "$dest/tests"
rm -rf "$dest/tests/providers"  # Keycloak server plugins (jars), not needed here
echo "$version" >"$dest/VERSION"
echo "python-keycloak $version tests placed in $dest/tests"
