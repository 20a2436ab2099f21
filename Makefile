# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv when missing and
# installs the package with its test extras into it; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pathosae apps tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/pathosae synth --out $(DEMO_DIR)/cohort --seed 0
	$(BIN)/pathosae run --manifest $(DEMO_DIR)/cohort/cohort.csv --out $(DEMO_DIR)/run --config configs/default.yaml

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python benchmarks/tiling.py
	$(BIN)/python benchmarks/embedding.py
	$(BIN)/python benchmarks/sae_train.py
	$(BIN)/python benchmarks/association.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
