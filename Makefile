# segflow: `make demo` and `make test` are all a newcomer needs (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test test-unit test-integration dashboard-png bench soak lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "segflow needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/segflow demo --seconds $${DEMO_SECONDS:-60}

# Some tests need Debian packages: the dashboard test drives headless Chromium, the
# rediss:// test needs a Redis built with TLS (the vendored Valkey is not; redis-tools
# has Debian's), the TLS tests make certificates with openssl. Installed here when
# missing and apt-get is usable (root), else named.
SYSTEM_DEPS := chromium:chromium redis-check-rdb:redis-tools openssl:openssl
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null || missing="$$missing $${dep#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "missing Debian packages (the tests that need them will fail):$$missing"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: install
	$(BIN)/pytest -q -m "not integration"

test-integration: install
	$(BIN)/pytest -q -m integration

dashboard-png: install  # regenerate docs/dashboard.png: runs the dashboard test (needs chromium) and keeps its screenshot
	SEGFLOW_DASHBOARD_PNG=$(CURDIR)/docs/dashboard.png $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_dashboard.py -k dashboard_renders

bench: install
	$(BIN)/segflow bench

soak: install
	$(BIN)/segflow soak --minutes $${SOAK_MINUTES:-60}

clean:
	rm -rf $(VENV) .segflow .pytest_cache .hypothesis *.egg-info
