# Every install step lives here: `make run` and `make test` work on a fresh Debian machine
# (root, Python 3.11+, git). The system packages below are installed once, only those missing;
# the virtualenv is built once and reused.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# What `make run` and `make test` need from Debian, one package a line, each with why:
APT_PACKAGES += python3-venv     # ensurepip, for `python3 -m venv` (Debian ships it apart)
APT_PACKAGES += python3-dev      # Python headers: python-prctl is a C extension
APT_PACKAGES += gcc libc6-dev    # a C compiler and libc headers, to build it
APT_PACKAGES += libcap-dev       # libcap headers, which python-prctl compiles against
APT_PACKAGES += libseccomp2      # libseccomp, which pyseccomp loads: the workers' seccomp filter
APT_PACKAGES += curl             # a real HTTP client in the tests, and in the README's first step
APT_PACKAGES += openssl          # s_client and certificate tools in the HTTPS tests
APT_PACKAGES += nghttp2-client   # nghttp and h2load: HTTP/2 clients in the tests and the benchmark
APT_PACKAGES += systemd          # systemd-analyze, to verify conf/sozu.service in the tests
APT_PACKAGES += etcd-server      # the etcd (3.4) the provider tests run: docs/etcd.md
APT_PACKAGES += etcd-client      # etcdctl, to write and read the layout by hand: docs/etcd.md

.PHONY: run test unit integration bench soak fuzz testssl clean system-packages

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): setup.py | system-packages
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The proxy in the foreground on 127.0.0.1:8080 with conf/config.toml, and the demo backend it
# routes to on 127.0.0.1:1026; Ctrl-C stops both.
run: system-packages $(STAMP)
	@$(PY) -m sozu.demo_backend --address 127.0.0.1:1026 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT; \
	echo "try: curl -H 'Host: localhost' http://127.0.0.1:8080/"; \
	$(PY) sozu.py start -c conf/config.toml

# Two kinds of tests get a test process of their own. The sandbox tests fork the test process:
# they run before other tests leave threads behind (a fork copies no threads but keeps their
# locks). The in-process session tests run a gevent hub, which closes some sockets later, by
# number: in a process shared with threaded test backends, such a late close once hit a
# descriptor a backend's listening socket had reused.
# The rest runs in two pytest-xdist processes: most tests wait on real processes and sockets,
# so two at a time keep 2 cores busy (5 min in one process, about 3 in two).
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --timeout=120
ISOLATED := tests/test_sandbox.py tests/integration/test_http_session_edge.py
test: system-packages $(STAMP)
	$(PYTEST) tests/test_sandbox.py
	$(PYTEST) tests/integration/test_http_session_edge.py
	$(PYTEST) -n 2 $(addprefix --ignore=,$(ISOLATED)) tests
	$(PY) fuzz/run.py --seconds 1

# Coverage-guided fuzzing of the parsers (fuzz/run.py, atheris), FUZZ_SECONDS per target; a
# crash leaves its input in fuzz/crashes/ and exits 1.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

unit: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/integration

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench: $(STAMP)
	bench/run.sh

# The long soak, not part of `make test`: 10 upgrades under load, slowhttptest with 1,000 slow
# connections against one worker, an over-limit flood with RSS sampled (a few minutes), then
# the fault soak (SOAK_DURATION, 30 minutes) with its report and plot in bench/out-soak/.
# Exits 1 when a check fails. matplotlib draws the plot; only the soak needs it.
SOAK_DURATION ?= 30m
soak: $(STAMP)
	@command -v slowhttptest >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slowhttptest; }
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) bench/soak.py --duration $(SOAK_DURATION)

# testssl.sh against an HTTPS listener with the default TLS settings; exits 1 on any weak
# protocol, cipher or vulnerability. Run it after every TLS change.
testssl: $(STAMP)
	bench/testssl.sh

clean:
	rm -rf $(VENV) build *.egg-info
