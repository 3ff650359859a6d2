# Two entry points for a newcomer (README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.numclip-installed
DEMO_DIR ?= work_dirs/numclip_demo

.PHONY: setup demo lint test clean

# torch is installed on its own first and only if missing, so that no dependency pulls a CUDA build onto a CPU
# machine and an existing torch is never replaced; every later pip call is constrained to the tested set.
$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c $(CONSTRAINTS) torch
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[tests]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python tools/train.py configs/numclip_demo.py --work-dir $(DEMO_DIR)
	$(BIN)/python tools/test.py configs/numclip_demo.py $$(cat $(DEMO_DIR)/last_checkpoint) \
		--work-dir $(DEMO_DIR) --out $(DEMO_DIR)/predictions.csv
	$(BIN)/python tools/analysis/plot_predictions.py $(DEMO_DIR)/predictions.csv --out-dir $(DEMO_DIR)/plots \
		--config configs/numclip_demo.py

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) work_dirs
