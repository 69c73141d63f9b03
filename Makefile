# The two commands: `make run` and `make test`. Both set up a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: setup run test test-sqlite test-postgres chromium services bench clean

setup: $(STAMP) node_modules/.installed chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# --ignore-scripts: we take files from npm (libraries, the IP database), never run their install scripts.
node_modules/.installed: package.json
	npm install --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium for the browser tests (never a downloaded browser build), with CJK fonts for the pages.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && dpkg -s fonts-noto-cjk fonts-noto-color-emoji >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji; \
	  else echo "chromium is missing and we are not root: browser tests cannot run"; fi; }

run: setup
	$(BIN)/shopdesk db upgrade
	$(BIN)/shopdesk demo
	$(BIN)/shopdesk serve --host 127.0.0.1 --port 8000

# The whole suite on SQLite, then again on PostgreSQL.
test: setup
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

test-sqlite:
	SHOPDESK_TEST_DB=sqlite $(BIN)/pytest -q -p no:cacheprovider -m "not postgres_only"

test-postgres:
	SHOPDESK_TEST_DB=postgres SHOPDESK_TEST_PG_URL=$(PG_URL) $(BIN)/pytest -q -p no:cacheprovider

# Start PostgreSQL and Redis on loopback if they are not up (CI calls this).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
	  --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log

bench: setup
	$(BIN)/python bench/aftersales_flow.py

clean:
	rm -rf var test-artifacts .pytest_cache
