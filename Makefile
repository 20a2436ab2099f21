# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv when missing and
# installs the package with its test extras into it; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint demo bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pathosae apps tests benchmarks
	$(BIN)/mypy

# A real one-node Slurm cluster (Debian's slurmctld, slurmd and munge) for the scale-out tests;
# installed only when running as root and missing. Without them those tests skip and say why.
# Chromium (Debian's) drives the app's end-to-end browser test through Playwright. On a developer
# machine a failed install is only reported; in CI (CI set, or PATHOSAE_REQUIRE_BROWSER=1) a
# missing Chromium after the install attempt stops here, as the browser test would fail anyway.
system-deps:
	@if [ "$$(id -u)" = 0 ] && { ! command -v slurmctld >/dev/null 2>&1 || \
	    ! command -v chromium >/dev/null 2>&1; }; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    slurmctld slurmd munge slurm-client chromium >/dev/null) || echo "could not install system packages"; fi
	@case "$${CI:-}" in ""|0|false|FALSE|False|no) required="$${PATHOSAE_REQUIRE_BROWSER:-}";; *) required=1;; esac; \
	if [ "$$required" = 1 ] && ! command -v chromium >/dev/null 2>&1; then \
	  echo "system-deps: chromium is missing, and CI (or PATHOSAE_REQUIRE_BROWSER=1) needs it for" \
	    "tests/test_app_browser.py. Fix: run as root so apt-get can install Debian's chromium" \
	    "package (apt-get install chromium), or install it in the CI image." >&2; exit 1; fi

test: lint system-deps
	$(BIN)/python -m pytest -q

# 40 small slides (not 24 large ones): the same tile count, enough slides per split and site for
# the slide-level statistics to mean something.
demo: $(STAMP)
	$(BIN)/pathosae synth --out $(DEMO_DIR)/cohort --seed 0 --slides 40 --min-px 1500 --max-px 2000
	$(BIN)/pathosae run --manifest $(DEMO_DIR)/cohort/cohort.csv --out $(DEMO_DIR)/run --config configs/default.yaml \
	  --ground-truth $(DEMO_DIR)/cohort/ground_truth

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python benchmarks/tiling.py --repeats 3
	$(BIN)/python benchmarks/embedding.py --tiles 320 --repeats 3
	$(BIN)/python benchmarks/sae_train.py --steps 25 --rounds 2
	$(BIN)/python benchmarks/association.py
	$(BIN)/python benchmarks/app_speed.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
