# The two commands of README.md: `make demo` starts the product, `make test` runs the tests.
# Both install what they need first (idempotent; fast when already installed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
CORE_PYTEST := $(PYTEST) -p no:ckan -p no:ckan_fixtures

.PHONY: install services test test-core test-ckan demo docs

$(VENV)/.installed: setup.py .ci/install
	bash .ci/install
	touch $@

install: $(VENV)/.installed

# PostgreSQL and Redis configured and running (idempotent, fast when they already are).
services: install
	bash .ci/services

test: services
	$(VENV)/bin/ruff check .
	$(CORE_PYTEST) -n 2 --dist loadgroup --ignore=tests/ckan tests testing
	$(PYTEST) --ckan-ini=tests/ckan/test.ini tests/ckan

test-core: services
	$(CORE_PYTEST) -n 2 --dist loadgroup --ignore=tests/ckan tests testing

test-ckan: services
	$(PYTEST) --ckan-ini=tests/ckan/test.ini tests/ckan

demo: services
	$(PY) -m demo.run

docs: install
	$(PY) -m tools.cli_reference > docs/cli.md
	$(PY) -m tools.config_reference > docs/configuration.md
