# `make demo` and `make test` set everything up first; the rest (setup, test-tools, ops, submit, test-*, bench-*,
# gpu-wheels, clean) are below.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
RECBOLE_VENV := .venv-recbole
RECBOLE_STAMP := $(RECBOLE_VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test-tools ops submit demo test test-unit test-integration test-reliability bench-encode bench-encode-quick bench-kmeans \
	bench-kmeans-quick bench-retokenize bench-retokenize-quick bench-ablations bench-ablations-quick bench-load bench-load-quick \
	bench-quality bench-quality-quick bench-scaling bench-scaling-quick bench-throughput bench-throughput-quick bench-slices \
	bench-slices-quick bench-offsets bench-offsets-quick bench-cold bench-cold-quick bench-paired bench-paired-quick bench-engine-start bench-parquet-reads bench-readers bench-readers-quick bench-ingest bench-ingest-quick bench-gpu-smoke gpu-wheels clean

setup: $(STAMP)

# Rebuilt only when the dependency list or the pins change; a second `make setup` does nothing.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Debian's Prometheus (prometheus + promtool) for the tests that scrape a run, and Chromium for the
# one that opens report.html (driven by Playwright, no browser download); apt, as root or via sudo.
test-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && test -x /usr/bin/chromium || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q \
	    --no-install-recommends prometheus chromium; }

# Grafana dashboards and alert rules from their one definition (qbr_dist/obs/dashboards.py).
ops: setup
	$(PY) -m qbr_dist.obs.dashboards ops

# make submit CONFIG=launch/configs/amazon2014-beauty.toml ARGS="--set train.lr=3e-4"
# (dashboard address from RAY_API_SERVER_ADDRESS; a cluster with token auth needs RAY_AUTH_MODE unset)
submit: setup
	env -u RAY_AUTH_MODE PATH="$(CURDIR)/$(VENV)/bin:$$PATH" launch/submit.sh $(CONFIG) $(ARGS)

demo: setup
	$(VENV)/bin/qbr run --config launch/configs/ml100k.toml --readme README.md

test: setup test-tools
	$(PY) -m pytest -q --durations=20 tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup test-tools
	$(PY) -m pytest -q tests/integration

test-reliability: setup test-tools
	$(PY) -m pytest -q tests/reliability

# Benchmarks (not part of `make test`): JSON under bench/results/. Peers they compare against
# (faiss) are installed only here.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench-encode: $(BENCH_STAMP)
	$(PY) bench/encode_pipeline.py

bench-encode-quick: $(BENCH_STAMP)
	$(PY) bench/encode_pipeline.py --quick

bench-kmeans: $(BENCH_STAMP)
	$(PY) bench/kmeans.py

bench-kmeans-quick: $(BENCH_STAMP)
	$(PY) bench/kmeans.py --quick

bench-retokenize: $(BENCH_STAMP)
	$(PY) bench/retokenize.py

bench-retokenize-quick: $(BENCH_STAMP)
	$(PY) bench/retokenize.py --quick

bench-load: $(BENCH_STAMP)
	$(PY) bench/load.py

bench-load-quick: $(BENCH_STAMP)
	$(PY) bench/load.py --items 20000

bench-ablations: $(BENCH_STAMP)
	$(PY) bench/ablations.py

bench-ablations-quick: $(BENCH_STAMP)
	$(PY) bench/ablations.py --quick

# RUNS: finished run directories (default runs/ml100k, what make demo writes)
bench-slices: $(STAMP)
	$(PY) bench/popularity_slices.py $(RUNS)

bench-slices-quick: $(STAMP)
	$(PY) bench/popularity_slices.py --quick $(RUNS)

bench-cold: $(STAMP)
	$(PY) bench/cold_scorers.py $(RUNS)

bench-cold-quick: $(STAMP)
	$(PY) bench/cold_scorers.py --quick $(RUNS)

bench-paired: $(STAMP)
	$(PY) bench/paired.py --name "$(NAME)" $(RUNS)

bench-paired-quick: $(STAMP)
	$(PY) bench/paired.py --quick --name "$(NAME)" $(RUNS)

bench-offsets: $(STAMP)
	$(PY) bench/target_offsets.py $(RUNS)

bench-offsets-quick: $(STAMP)
	$(PY) bench/target_offsets.py --quick $(RUNS)

bench-scaling: $(BENCH_STAMP)
	$(PY) bench/scaling.py

bench-scaling-quick: $(BENCH_STAMP)
	$(PY) bench/scaling.py --quick

# RecBole 1.2.1 (the peers of bench/quality.py) pins an old Ray: its own venv, with the project's torch pin.
$(RECBOLE_STAMP): bench/recbole/requirements.txt constraints.txt
	test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints.txt \
	  -r bench/recbole/requirements.txt
	touch $(RECBOLE_STAMP)

bench-quality: $(STAMP) $(RECBOLE_STAMP)
	$(PY) bench/quality.py

bench-quality-quick: $(STAMP) $(RECBOLE_STAMP)
	$(PY) bench/quality.py --quick

bench-throughput: $(STAMP) $(RECBOLE_STAMP)
	$(PY) bench/train_throughput.py

bench-throughput-quick: $(STAMP) $(RECBOLE_STAMP)
	$(PY) bench/train_throughput.py --quick

# bench/gpu/run.sh runs on a lent GPU machine (bench/README.md); here: its wheels, and its code path tiny on the CPU.
gpu-wheels: $(STAMP)
	PYTHON=$(PY) bash bench/gpu/wheels.sh

bench-engine-start: $(STAMP)
	$(PY) bench/engine_start.py

bench-parquet-reads: $(STAMP)
	$(PY) bench/parquet_reads.py

bench-readers: $(BENCH_STAMP)
	$(PY) bench/readers.py

bench-readers-quick: $(BENCH_STAMP)
	$(PY) bench/readers.py --quick

bench-ingest: $(BENCH_STAMP)
	$(PY) bench/ingest.py

bench-ingest-quick: $(BENCH_STAMP)
	$(PY) bench/ingest.py --quick

bench-gpu-smoke: $(STAMP)
	PYTHON=$(PY) bash bench/gpu/run.sh --smoke

clean:
	rm -rf $(VENV) $(RECBOLE_VENV) .pytest_cache
