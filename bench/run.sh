#!/usr/bin/env bash
# Side-by-side benchmark: sozu (2 workers) beside nginx, haproxy and the naive gevent proxy,
# against the same backend, on loopback only (../shared/bench/proxybench.py). Prints ratios;
# quote those, not absolute numbers. Needs a quiet machine: run nothing else meanwhile.
#
#   make bench                      # or: bench/run.sh --rounds 1 --only direct,nginx-2w,sozu
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
shared="${SOZU_SHARED:-$root/../shared}"
for tool in nginx haproxy wrk; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy wrk; break; }
done
exec "$root/.venv/bin/python" "$shared/bench/proxybench.py" \
  --only direct,nginx-2w,haproxy-2t,naive-gevent,sozu \
  --python "$root/.venv/bin/python" \
  --proxy sozu="$root/.venv/bin/python $root/sozu.py start -c {config}" \
  --proxy-config-template "$shared/bench/sozu.toml.tmpl" \
  --rounds 3 --md "$root/bench/out.md" --json "$root/bench/out.json" "$@"
