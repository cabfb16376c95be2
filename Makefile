# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000
HOST   ?= 127.0.0.1

# The web console's browser test drives Debian's Chromium through Playwright (Playwright's own
# browser download needs the internet, so `playwright install` is never run).
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser redis compose demo test test-fast lint bench clean

install: $(STAMP)

# torch is installed first and pinned: pip then takes the local CPU build instead of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet 'torch==2.13.0'
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys demo --host $(HOST) --port $(PORT)

# idempotent: apt only runs when the browser is missing
browser:
	@test -x $(CHROMIUM) || { echo "installing chromium (apt) for tests/test_console.py"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

# The Redis online store tests (tests/test_online_redis.py) start Debian's redis-server on a free
# loopback port themselves, with a password and no persistence, and stop it after; idempotent.
REDIS_SERVER := /usr/bin/redis-server
redis:
	@test -x $(REDIS_SERVER) || { echo "installing redis-server (apt) for tests/test_online_redis.py"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# tests/test_infra.py reads infra/compose.yaml with Debian's docker-compose 1.29 (`config` needs
# no daemon). --no-install-recommends: 16 small Python packages (~5 MB) instead of 46 with docker.io.
DOCKER_COMPOSE := /usr/bin/docker-compose
compose:
	@test -x $(DOCKER_COMPOSE) || { echo "installing docker-compose (apt) for tests/test_infra.py"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }

test: $(STAMP) browser redis compose
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# the unit tests alone (under a minute): `make test` runs them with the end-to-end ones
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/vector_search.py

clean:
	rm -rf var .pytest_cache .ruff_cache
