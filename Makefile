# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Both create (or reuse, in seconds) a project-local environment in .venv/ from requirements.lock.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-lock

# pip on some machines is configured with a local wheel folder holding a CPU-only torch build that
# PyPI's torchvision cannot run on (`operator torchvision::nms does not exist`). Ignore any local pip
# configuration so the matched torch/torchvision pair always comes from the public index.
export PIP_CONFIG_FILE := /dev/null
unexport PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-all test-fast bench lock clean-venv

setup: $(STAMP)

# Reinstall only when the lock changed since the last install (the stamp is a copy of the lock).
$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if cmp -s requirements.lock $(STAMP); then touch $(STAMP); else \
	  echo "Installing pinned dependencies into $(VENV)/ (first time: a few minutes, ~5 GB)"; \
	  $(PY) -m pip install --quiet --no-deps -r requirements.lock && cp requirements.lock $(STAMP); fi
	@$(PY) -c "import torch, torchvision.ops, facenet_pytorch, zarr, dask; from pipeline.media import ffmpeg_exe; print('environment ready: torch', torch.__version__, '| ffmpeg', ffmpeg_exe())"

demo: setup
	$(PY) cli.py demo --out demo

# The default run keeps under ~15 minutes on 2 cores; the `heavy` end-to-end tests run with test-all.
test: setup
	$(PY) -m pytest -m "not heavy"

test-all: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow and not heavy"

bench: setup
	$(PY) bench/extract.py
	$(PY) bench/train.py

# Re-resolve the pins from requirements.in (needs network); commit the new requirements.lock.
lock:
	rm -rf /tmp/avstore-lock-venv && $(PYTHON) -m venv /tmp/avstore-lock-venv
	/tmp/avstore-lock-venv/bin/pip install --quiet -r requirements.in
	(echo '# Exact versions installed by `make setup` (pip install --no-deps -r requirements.lock). Regenerate with `make lock`.'; \
	  /tmp/avstore-lock-venv/bin/pip freeze --exclude-editable) > requirements.lock

clean-venv:
	rm -rf $(VENV)
