# Every install step lives here: `make run` and `make test` work on a fresh Debian machine
# (root, Python 3.11+, git). The virtualenv is built once and reused.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := libcap-dev curl openssl

.PHONY: run test unit integration soak bench clean system-deps

$(STAMP): setup.py
	@# python-prctl compiles against libcap's headers.
	@if [ ! -f /usr/include/sys/capability.h ] || ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	@true

run: $(STAMP)
	$(PY) -m sozu.demo_backend --address 127.0.0.1:1026 & \
	demo=$$!; trap "kill $$demo" EXIT INT TERM; \
	$(PY) sozu.py start -c conf/config.toml

test: $(STAMP)
	$(PY) -m pytest -q tests

unit: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/integration

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

clean:
	rm -rf $(VENV) build *.egg-info
