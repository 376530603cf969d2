# Every install step lives here: `make run` and `make test` work on a fresh Debian machine
# (root, Python 3.11+, git). The virtualenv is built once and reused.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := libcap-dev curl openssl

.PHONY: run test unit integration bench soak clean

$(STAMP): setup.py
	@# python-prctl compiles against libcap's headers.
	@if [ ! -f /usr/include/sys/capability.h ] || ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The proxy in the foreground on 127.0.0.1:8080 with conf/config.toml, and the demo backend it
# routes to on 127.0.0.1:1026; Ctrl-C stops both.
run: $(STAMP)
	@$(PY) -m sozu.demo_backend --address 127.0.0.1:1026 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT; \
	echo "try: curl -H 'Host: localhost' http://127.0.0.1:8080/"; \
	$(PY) sozu.py start -c conf/config.toml

# Two kinds of tests get a test process of their own. The sandbox tests fork the test process:
# they run before other tests leave threads behind (a fork copies no threads but keeps their
# locks). The in-process session tests run a gevent hub, which closes some sockets later, by
# number: in a process shared with threaded test backends, such a late close once hit a
# descriptor a backend's listening socket had reused.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --timeout=120
ISOLATED := tests/test_sandbox.py tests/integration/test_http_session_edge.py
test: $(STAMP)
	$(PYTEST) tests/test_sandbox.py
	$(PYTEST) tests/integration/test_http_session_edge.py
	$(PYTEST) $(addprefix --ignore=,$(ISOLATED)) tests

unit: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/integration

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench: $(STAMP)
	bench/run.sh

# The long soak of issue #4, not part of `make test` (a few minutes): 10 upgrades under load,
# slowhttptest with 1,000 slow connections against one worker, an over-limit flood with RSS
# sampled. Prints its figures; exits 1 when a check fails.
soak: $(STAMP)
	@command -v slowhttptest >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slowhttptest; }
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info
