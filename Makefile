PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test bench models lint clean

install:  ## install onnxcomp with the test dependencies
	$(PIP) install -q -e ".[dev]"

test:  ## the whole test suite (what CI runs)
	$(PYTHON) -m pytest -n 2 -q --timeout 1800 tests

bench:  ## benchmarks: tables on stdout, CSV + PNG under bench/out/
	$(PYTHON) bench/sampling.py
	$(PYTHON) bench/stability.py
	$(PYTHON) bench/lossy.py

models:  ## re-train the fixture models (needs torch: pip install torch==2.13.0)
	$(PYTHON) models/train_fixtures.py

clean:
	rm -rf build *.egg-info .pytest_cache bench/out
