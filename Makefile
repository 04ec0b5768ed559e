# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv, install the package with its extras and make sure
# redis-server exists before doing anything else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run run-cluster test bench redis-server chromium mcp-reference-server ag-ui-client promtool image clean

# llama-cpp-python compiles llama.cpp. Native CPU flags turn on AMX where the CPU has it, and
# ggml's AMX code crashes (SIGSEGV) on virtualized Xeons, so it is built portably (AVX2, no AMX).
# pip's wheel cache ignores CMAKE_ARGS and may hold a natively built wheel: if the installed
# build reports AMX, it is rebuilt without the cache. Then one smoke inference: if the model
# cannot run here, the install still succeeds and `make run` uses the rules reasoner.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[test,bench,local]'
	$(BIN)/python -m workers.reasoners.local_check portable || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps \
	    "llama-cpp-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
	$(BIN)/python -m workers.reasoners.local_check portable || true
	$(BIN)/python -m workers.reasoners.local_check smoke || echo "make run will use the rules reasoner"
	touch $(STAMP)

redis-server:
	@bash deploy/install-redis.sh

chromium:
	@bash deploy/install-chromium.sh

mcp-reference-server:
	@bash deploy/install-mcp-reference.sh

ag-ui-client:
	@bash deploy/install-ag-ui-client.sh

promtool:
	@bash deploy/install-promtool.sh

run: $(STAMP) redis-server
	$(BIN)/turnstream dev

# The same system on distributed Redis: the broker behind Sentinel, the other stores on Redis Clusters.
run-cluster: $(STAMP) redis-server
	$(BIN)/turnstream dev --cluster

test: $(STAMP) redis-server chromium mcp-reference-server ag-ui-client promtool
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) redis-server
	$(BIN)/python bench/run_all.py

# The container image (deploy/Dockerfile); LOCAL_MODEL=1 adds the offline local model.
IMAGE       ?= turnstream:$(shell sed -n 's/^version = //p' setup.cfg)
LOCAL_MODEL ?= 0
image:
	docker build -f deploy/Dockerfile --build-arg LOCAL_MODEL=$(LOCAL_MODEL) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .run .pytest_cache
