# Two commands matter on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

DEMO_RUN ?= runs/digits
DEMO_REPO ?= model_repository
DEMO_PORT ?= 8001
DEMO_METRICS_PORT ?= 8002

.PHONY: venv demo test quick lint protos check-protos check-deploy images soak bench perf-analyzer clean

venv: $(STAMP)

# One install of every dependency set (serve + train + dev), pinned by the constraints file.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve,train,ray,dev]'
	$(PIP) check
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# PYTEST_ARGS: more pytest arguments (.ci/run adds a JUnit report, from which it checks what was skipped).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m serving.gen_protos --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The inner loop's tier: the tests that open no sockets and start no processes (tests/conftest.py classifies them by
# what they use, and fails any that does either), in under 3 minutes on 2 cores.
quick: $(STAMP)
	$(PY) -m pytest -q --quick $(PYTEST_ARGS)

# gRPC stubs (serving/_generated/) from protos/, with the pinned grpcio-tools.
protos: $(STAMP)
	$(PY) -m serving.gen_protos

check-protos: $(STAMP)
	$(PY) -m serving.gen_protos --check

demo: $(STAMP)
	PY=$(PY) DEMO_RUN=$(DEMO_RUN) DEMO_REPO=$(DEMO_REPO) DEMO_PORT=$(DEMO_PORT) \
	    DEMO_METRICS_PORT=$(DEMO_METRICS_PORT) scripts/demo.sh

# Container files (deploy/check.py), then tests/deploy: the images built and run when a Docker engine answers, else
# their commands run here.
check-deploy: $(STAMP)
	$(PY) -m deploy.check
	$(PY) -m pytest -q tests/deploy

# The serve and train images (deploy/images.py; no venv needed). Where Docker Hub cannot be reached it first builds a
# base from Debian packages. PIP_CA: a CA bundle pip trusts inside the build (default: the one pip uses here).
IMAGES ?= serve train
PIP_CA ?= $(PIP_CERT)
images:
	$(PYTHON) -m deploy.images $(IMAGES) $(if $(PIP_CA),--pip-ca $(PIP_CA))

# Long reliability runs (make test runs the short ones): a 10-minute soak and a 50,000-input fuzz with a new seed.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) FUZZ_MUTATIONS=50000 FUZZ_SECONDS=300 FUZZ_EXAMPLES=3000 \
	FUZZ_SEED=$$(date +%s) OVERLOAD_SECONDS=30 CONNECTION_FLOOD_SECONDS=40 $(PY) -m pytest -q tests/reliability

# Every performance claim against its baseline, measured in one run (< 10 min on 2 cores): prints the table, writes
# benchmarks/results/<date>-<host>.json and benchmarks/results/latest.md. One family: make bench BENCH_ARGS="--only server".
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

# NVIDIA's perf_analyzer for the perf_analyzer family: tritonclient 2.51.0's binary (the newest built for glibc 2.36)
# and CUDA 12's runtime library from PyPI, hash-checked, into build/perf_analyzer/; it also needs Debian's libb64-0d.
# Without it that family reports why and measures nothing.
perf-analyzer: $(STAMP)
	$(PY) -m benchmarks.get_perf_analyzer

clean:
	rm -rf runs model_repository .pytest_cache .ruff_cache .venv-serve
