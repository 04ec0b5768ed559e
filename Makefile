# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv, install the package with its extras and make sure
# redis-server exists before doing anything else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run run-cluster test bench redis-server chromium mcp-reference-server clean

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,local]'
	touch $(STAMP)

redis-server:
	@bash deploy/install-redis.sh

chromium:
	@bash deploy/install-chromium.sh

mcp-reference-server:
	@bash deploy/install-mcp-reference.sh

run: $(STAMP) redis-server
	$(BIN)/turnstream dev

# The same system on distributed Redis: the broker behind Sentinel, the other roles on Redis Clusters.
run-cluster: $(STAMP) redis-server
	$(BIN)/turnstream dev --cluster

test: $(STAMP) redis-server chromium mcp-reference-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) redis-server
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .run .pytest_cache
