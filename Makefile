# The two commands of README.md: `make demo` starts the product, `make test` runs the tests.
# Both install what they need first (idempotent; fast when already installed).
VENV ?= .venv
# CKAN 2.12 (and the core tests) run in $(VENV), CKAN 2.11 in a virtualenv of its own:
# CKAN pins its requirements exactly, the two releases differently (.ci/install).
CKAN211_VENV ?= .venv-ckan211
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
CORE_PYTEST := $(PYTEST) -p no:ckan -p no:ckan_fixtures
CKAN_SESSION := --ckan-ini=tests/ckan/test.ini tests/ckan

.PHONY: install compiled services test test-core test-ckan test-ckan212 test-ckan211 demo docs

$(VENV)/.installed $(CKAN211_VENV)/.installed &: setup.py .ci/install
	bash .ci/install
	touch $(VENV)/.installed $(CKAN211_VENV)/.installed

install: $(VENV)/.installed $(CKAN211_VENV)/.installed

# The validator's compiled modules current with their sources (incremental; token_service/validator/build.py).
compiled: install
	$(PY) setup.py -q build_ext --inplace

# PostgreSQL and Redis configured and running (idempotent, fast when they already are).
services: install
	bash .ci/services

# The core session once; CKAN's session once per supported CKAN release. python-keycloak's own
# tests must run there, never skip (tests/keycloak/python_keycloak_suite).
test: services compiled
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MLTOKENS_TEST_REQUIRE_COMPILED=1 MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE=1 $(CORE_PYTEST) -n 2 --dist loadgroup --ignore=tests/ckan tests testing
	$(PYTEST) $(CKAN_SESSION)
	$(CKAN211_VENV)/bin/python -m pytest $(CKAN_SESSION)

test-core: services compiled
	MLTOKENS_TEST_REQUIRE_COMPILED=1 MLTOKENS_TEST_REQUIRE_KEYCLOAK_SUITE=1 $(CORE_PYTEST) -n 2 --dist loadgroup --ignore=tests/ckan tests testing

test-ckan: test-ckan212 test-ckan211

test-ckan212: services
	$(PYTEST) $(CKAN_SESSION)

test-ckan211: services
	$(CKAN211_VENV)/bin/python -m pytest $(CKAN_SESSION)

demo: services
	$(PY) -m demo.run

docs: install
	$(PY) -m tools.cli_reference > docs/cli.md
	$(PY) -m tools.config_reference > docs/configuration.md
