#!/usr/bin/env bash
# Installs what the test suite needs and the machine may lack: mosquitto clients and broker
# (real third-party MQTT peers), Chromium (renders the status page in tests/status_page.rs),
# promtool (checks the Prometheus rules in tests/monitoring_kit.rs) and pymongo (the second
# driver that checks tests/mongo-double).
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# Chromium is big and optional: where it cannot be installed the browser test says it is
# skipped, and everything else still runs.
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium \
    || echo "chromium could not be installed: tests/status_page.rs will skip its browser test"
fi

# promtool checks deploy/prometheus-rules.yml (tests/monitoring_kit.rs). Debian ships it in
# the prometheus package, whose install would also start a Prometheus server on :9090 (the
# gateway's HTTP port): only promtool is unpacked, into a cache outside the clone. Optional
# like Chromium: without it that test says it is skipped.
promtool_dir="$HOME/.cache/iotsphere-gateway/promtool"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$promtool_dir/usr/bin/promtool" ]; then
  echo "unpacking promtool from Debian's prometheus package"
  download=$(mktemp -d)
  if (cd "$download" && { apt-get download -q prometheus >/dev/null 2>&1 \
        || { as_root apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; }); then
    mkdir -p "$promtool_dir"
    dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C "$promtool_dir" ./usr/bin/promtool
  else
    echo "promtool could not be downloaded: tests/monitoring_kit.rs will skip its promtool test"
  fi
  rm -rf "$download"
fi

if ! python3 -c 'import pymongo' >/dev/null 2>&1; then
  echo "installing pymongo"
  python3 -m pip install --quiet --disable-pip-version-check 'pymongo>=4.6'
fi
