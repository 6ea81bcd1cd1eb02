# The two README commands. Everything else lives in the package.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# a second environment for what needs torchvision (GPU JPEG decoding's CPU twin, timm): torchvision
# does not import beside the CPU torch of constraints.txt
VISION := .venv-vision
VSTAMP := $(VISION)/.installed
VISION_TESTS := tests/data/test_jpeg_device.py tests/models/test_registry_timm.py tests/detection/test_torchvision_adapters.py \
	tests/examples/test_timm_example.py

# the oldest releases pyproject.toml admits (constraints-oldest.txt) on the oldest Python; by hand, not CI
PYTHON_OLDEST ?= python3.9
OLDEST := .venv-oldest
OSTAMP := $(OLDEST)/.installed

.PHONY: demo test test-fast test-vision test-oldest lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,plot,progress]"
	touch $(STAMP)

$(VSTAMP): pyproject.toml constraints-vision.txt
	$(PYTHON) -m venv $(VISION)
	$(VISION)/bin/python -m pip install --quiet -c constraints-vision.txt -e ".[vision,timm,images]" "pytest>=7"
	touch $(VSTAMP)

$(OSTAMP): pyproject.toml constraints-oldest.txt
	$(PYTHON_OLDEST) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet -c constraints-oldest.txt \
		-e ".[config,images,plot,progress,tensorboard,mlflow,wandb,lightning,hf]" torchmetrics "pytest>=7"
	touch $(OSTAMP)

demo: $(STAMP)
	$(PY) -m ols demo

# the torchvision environment (mostly unpacking a 5.5 GB wheel) builds in the background while the main
# one installs (two cores: each install is one process), so the suite runs with both cores; its log is
# shown only when it fails. (Not --no-compile: with PYTHONDONTWRITEBYTECODE set, as on this VM, every
# process would then compile torch at import, and the suite took 23 minutes instead of 13.)
test:
	$(MAKE) --no-print-directory $(VSTAMP) > $(VISION).log 2>&1 & vision=$$!; \
	$(MAKE) --no-print-directory $(STAMP) && $(PY) -m ruff check src tests benchmarks examples \
	&& $(PY) -m pytest -q -m "slow or not slow"; status=$$?; \
	wait $$vision || { cat $(VISION).log; echo "building $(VISION) failed: log above"; exit 1; }; \
	exit $$status
	OLS_REQUIRE_VISION=1 $(VISION)/bin/python -m pytest -q -p no:cacheprovider $(VISION_TESTS)

# the torchvision/timm tests alone, in their environment
test-vision: $(VSTAMP)
	OLS_REQUIRE_VISION=1 $(VISION)/bin/python -m pytest -q -p no:cacheprovider $(VISION_TESTS)

# the unmarked tier only (about a minute on 2 cores), as a plain `pytest` runs; CI runs `make test`
test-fast: $(STAMP)
	$(PY) -m pytest -q

# both tiers on the oldest declared releases (a 5 GB CUDA torch from PyPI; about 10 minutes of tests)
test-oldest: $(OSTAMP)
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/loss_overhead.py

clean:
	rm -rf $(VENV) $(VISION) $(VISION).log $(OLDEST) runs .pytest_cache
