#!/usr/bin/env bash
# Installs what the test suite needs and the machine may lack: mosquitto clients and broker
# (real third-party MQTT peers), Chromium (renders the status page in tests/status_page.rs)
# and pymongo (the second driver that checks tests/mongo-double).
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# Chromium is big and optional: where it cannot be installed the browser test says it is
# skipped, and everything else still runs.
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium"
  as_root apt-get install -y -q chromium >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q chromium >/dev/null; } \
    || echo "chromium could not be installed: tests/status_page.rs will skip its browser test"
fi

if ! python3 -c 'import pymongo' >/dev/null 2>&1; then
  echo "installing pymongo"
  python3 -m pip install --quiet --disable-pip-version-check 'pymongo>=4.6'
fi
