PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-fast wheel-check bench bench-quick models clean

install:  ## install onnxcomp with the test dependencies
	$(PIP) install -q -e ".[dev]"

test:  ## the whole test suite (what CI runs)
	$(PYTHON) -m pytest -n 2 -q --timeout 1800 tests

test-fast:  ## everything but the end-to-end tests marked slow (about a minute)
	$(PYTHON) -m pytest -n 2 -q --timeout 600 -m "not slow" tests

wheel-check:  ## build the wheel, install it without extras in a fresh venv, run the main commands outside the checkout
	.ci/wheel-check

bench:  ## benchmarks: tables on stdout, CSV + PNG under bench/out/ (the stability bench takes hours)
	$(PYTHON) bench/sampling.py
	$(PYTHON) bench/stability.py
	$(PYTHON) bench/lossy.py
	$(PYTHON) bench/cnn.py

bench-quick:  ## the same benchmarks on fewer models and shorter limits (minutes)
	$(PYTHON) bench/sampling.py --quick
	$(PYTHON) bench/stability.py --quick
	$(PYTHON) bench/lossy.py --quick
	$(PYTHON) bench/cnn.py --quick

models:  ## re-train the fixture models (needs torch: pip install torch==2.13.0)
	$(PYTHON) models/train_fixtures.py

clean:
	rm -rf build *.egg-info .pytest_cache bench/out
