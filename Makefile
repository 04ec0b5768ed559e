# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv, install the package with its extras and make sure
# redis-server exists before doing anything else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test bench redis-server chromium mcp-reference-server ag-ui-client clean

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

ag-ui-client:
	@bash deploy/install-ag-ui-client.sh

run: $(STAMP) redis-server
	$(BIN)/turnstream dev

test: $(STAMP) redis-server chromium mcp-reference-server ag-ui-client
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) redis-server
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .run .pytest_cache
