#!/usr/bin/env bash
# testssl.sh against an HTTPS listener with the default TLS settings (no tls_versions, no
# cipher_list): fails on any weak protocol, cipher or known vulnerability, that is on any
# finding testssl rates LOW, MEDIUM, HIGH or CRITICAL. Run it after every TLS change.
# Loopback only: a throw-away CA and certificate, the demo backend, one worker.
#
#   make testssl                  # or: bench/testssl.sh [--keep]   (--keep: leave the work dir)
#   LISTENER_EXTRA='cipher_list = "ECDHE-ECDSA-AES128-SHA"' bench/testssl.sh   # must fail: checks the check
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
py="$root/.venv/bin/python"
command -v testssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq testssl.sh; }
work="$(mktemp -d /tmp/sozu-testssl.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${1:-}" = "--keep" ] || rm -rf "$work"
}
trap 'cleanup "$@"' EXIT

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
backend="$(free_port)"

# A CA and a P-256 certificate for tls.test signed by it: testssl checks the chain (--add-ca),
# and rates a certificate that expires within 60 days as weak.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 400 -subj "/CN=sozu testssl CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tls.test" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:tls.test\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 365 \
  -extfile "$work/ext" -out "$work/tls.pem" 2>/dev/null

cat > "$work/sozu.toml" <<EOF
command_socket = "$work/sozu.sock"
worker_count = 1
log_access_target = "off"

[[listeners]]
protocol = "https"
address = "127.0.0.1:$port"
${LISTENER_EXTRA:-}

[applications.web]
protocol = "http"
frontends = [ { address = "127.0.0.1:$port", hostname = "tls.test", certificate = "$work/tls.pem", key = "$work/tls.key" } ]
backends = [ "127.0.0.1:$backend" ]
EOF

"$py" -m sozu.demo_backend --address "127.0.0.1:$backend" >"$work/backend.log" 2>&1 & pids+=($!)
"$py" sozu.py start -c "$work/sozu.toml" >"$work/sozu.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null --cacert "$work/ca.pem" --resolve "tls.test:$port:127.0.0.1" "https://tls.test:$port/" && break
  sleep 0.1
done

# Everything but the client simulation (a list of browsers, not a property of the server).
testssl --quiet --color 0 --warnings off --add-ca "$work/ca.pem" --ip 127.0.0.1 \
  --protocols --server-defaults --server-preference --std --fs --headers --vulnerable \
  --jsonfile "$work/testssl.json" "https://tls.test:$port" >"$work/testssl.txt" 2>&1 || true

# Session resumption, checked directly (printed, not a weakness either way): testssl 3.0 reports
# a "connect problem" for tickets sent after the TLS 1.3 handshake, once its s_client has closed.
resumption=""
for version in -tls1_2 -tls1_3; do
  sleep 0.5 | openssl s_client $version -connect "127.0.0.1:$port" -servername tls.test -CAfile "$work/ca.pem" \
    -sess_out "$work/session$version" >/dev/null 2>&1 || true
  if printf 'HEAD / HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n' | openssl s_client $version \
      -connect "127.0.0.1:$port" -servername tls.test -CAfile "$work/ca.pem" -sess_in "$work/session$version" \
      -ign_eof 2>/dev/null | grep -q '^Reused'; then
    resumption+="${version#-} yes "
  else
    resumption+="${version#-} NO "
  fi
done

"$py" - "$work/testssl.json" "$resumption" <<'EOF'
import collections
import json
import sys

WEAK = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
# Findings about what this script's throw-away setup lacks, not about the listener's TLS:
NOT_THE_LISTENER = {
    "cert_revocation": "the test CA publishes no CRL or OCSP responder",
    "DNS_CAArecord": "tls.test has no DNS, hence no CAA record",
    "HSTS": "an HTTP header the application sets (Strict-Transport-Security), not TLS",
    "security_headers": "HTTP headers the application sets, not TLS",
    "sessionresumption_ticket": "a testssl 3.0 limitation; checked with openssl s_client instead",
}
findings = json.load(open(sys.argv[1]))
print("session resumption (openssl s_client -sess_out/-sess_in):", " ".join(sys.argv[2].split()))
by_severity = collections.Counter(f["severity"] for f in findings)
print("testssl findings by severity:", dict(sorted(by_severity.items())))
for f in findings:
    if f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "FS", "cipher_order",
                   "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                   "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_STRONG", "FS_ECDHE_curves"):
        print(f"  {f['id']}: {f['finding']}")
VULNERABILITIES = ("heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego",
                   "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
                   "LOGJAM", "BEAST", "LUCKY13", "RC4")
print("  vulnerabilities:", ", ".join(f"{f['id']} {f['severity']}" for f in findings if f["id"] in VULNERABILITIES))
for f in findings:
    if f["id"] in NOT_THE_LISTENER and f["severity"] not in ("OK", "INFO"):
        print(f"  ignored {f['severity']} {f['id']}: {f['finding']} ({NOT_THE_LISTENER[f['id']]})")
findings = [f for f in findings if f["id"] not in NOT_THE_LISTENER]
weak = [f for f in findings if f["severity"] in WEAK]
for f in weak:
    print(f"  WEAK {f['severity']} {f['id']}: {f['finding']}")
scan_problems = [f for f in findings if f["severity"] == "WARN" or f["id"] == "scanProblem"]
for f in scan_problems:
    print(f"  SCAN PROBLEM {f['id']}: {f['finding']}")
print(f"testssl: {len(weak)} weak findings" + (", " + str(len(scan_problems)) + " scan problems" if scan_problems else ""))
sys.exit(1 if weak or scan_problems or not findings else 0)
EOF
