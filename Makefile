# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install alignkit (torch pinned to the CPU 2.13.0 build), run the core demo
#   make test   the same set-up, then the whole test suite
VENV    ?= .venv
PYTHON  ?= python3
EXTRAS  ?= all
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.alignkit-installed
DEMO    ?= core
OUT     ?= runs/demo-$(DEMO)
PYTEST_ARGS ?= -n 2 --durations=15
SYSTEM_PACKAGES ?= libusb-1.0-0 libosmesa6 chromium

.PHONY: setup system-deps demo test clean

setup: system-deps $(STAMP)

system-deps:
	@ALIGNKIT_SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)" bash scripts/system_deps.sh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch (or a package that asks for one) pulls GBs of CUDA wheels
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: setup
	$(PY) -m alignkit.cli demo $(DEMO) --out $(OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
