"""The names and defaults that the config file, the orders, the workers and sozuctl share (pure).

Each is written here once: the config file spells a policy in lower case (`roundrobin`), the
orders in Sozu's CamelCase (`RoundRobin`), and both come from POLICIES.
"""
from __future__ import annotations

# Load-balancing policies, as orders spell them (docs/orders.md); the config file and sozuctl
# take them in lower case.
POLICIES = ("RoundRobin", "Random", "LeastConnections", "PowerOfTwo")
DEFAULT_POLICY = "RoundRobin"
POLICY_BY_LOWER_NAME = {policy.lower(): policy for policy in POLICIES}

# The TLS versions an https listener may offer; older ones are refused as insecure.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
# How orders may spell them (Sozu's and OpenSSL's spellings, any case), and the spellings of the
# insecure ones, which are refused by name; the config file takes the same spellings.
TLS_VERSION_SPELLINGS = {spelling: version for version in TLS_VERSIONS
                         for spelling in (version.lower(), version.lower().replace(".", "_"),
                                          version.lower().replace("v", ""))}
INSECURE_TLS_SPELLINGS = frozenset({"sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1_0", "tlsv1.1",
                                    "tlsv1_1", "tls1.0", "tls1.1"})

# A listener's timeouts in seconds, when neither the listener nor the config file sets them.
# request_timeout applies to http and https listeners only.
LISTENER_TIMEOUTS = {"front_timeout": 60, "back_timeout": 30, "connect_timeout": 3, "request_timeout": 10}
TCP_LISTENER_TIMEOUTS = {name: LISTENER_TIMEOUTS[name]
                         for name in ("front_timeout", "back_timeout", "connect_timeout")}

DEFAULT_STICKY_NAME = "SOZUBALANCEID"

# A backend's share of its application's traffic, when neither the file nor the order sets it.
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 1000

# What an https listener offers by ALPN, preferred first, unless it sets `alpn`; and the HTTP/2
# streams a client may have open at once on one connection (each may hold a backend connection).
ALPN_PROTOCOLS = ("h2", "http/1.1")
DEFAULT_MAX_CONCURRENT_STREAMS = 100
MAX_CONCURRENT_STREAMS = 1000
