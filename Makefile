# medeff: setup and entry points for a fresh machine.
#   make demo   create .venv, install, run the demo job on built-in phantom data
#   make test   create .venv if needed, install, run the test suite
#
# Torch: by default the CPU build `torch==2.13.0` is installed before anything else, so no
# dependency can pull a multi-GB CUDA build. On a GPU machine choose a CUDA build with e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.medeff-installed
PYTEST_ARGS ?=
DEMO_OUT ?= demo_out

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || \
		$(PIP) install --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install --disable-pip-version-check -e ".[test,weights]"
	# timm is a test-only numerical reference; --no-deps because its torchvision pin cannot import beside CPU torch
	$(PIP) install --disable-pip-version-check --no-deps "timm==1.0.31"
	@$(PY) -c "import torch; print('medeff setup: torch', torch.__version__, '| CUDA build:', torch.version.cuda or 'no')"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/medeff demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
