#!/usr/bin/env bash
# Builds the gateway for the Raspberry Pi (aarch64 and armv7) with Debian's cross
# compilers, then smoke-tests each binary under qemu-user: --version, and a real start:
# a heater reports (mosquitto_pub), the gateway answers with the document (mosquitto_sub),
# SIGTERM stops it with exit 0.
# PROFILE=release (default: cross-check, unoptimized, what CI uses to stay fast).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh

need=()
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

target_dir="${CARGO_TARGET_DIR:-target}"

# Runs the emulated gateway on a free loopback port: reported in, document out, SIGTERM.
smoke_run() {
  local qemu=$1 sysroot=$2 binary=$3 work port pid document status
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '[gateway]\nid = "gw-qemu"\ndata_dir = "%s/data"\n[mqtt]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = ""\n[log]\nlevel = "warn"\n' \
    "$work" "$port" >"$work/gateway.toml"
  "$qemu" -L "$sysroot" "$binary" run --config "$work/gateway.toml" 2>"$work/gateway.log" &
  pid=$!
  for _ in $(seq 1 300); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  mosquitto_sub -h 127.0.0.1 -p "$port" -t iotsphere/devices/pi-heater/shadow/document -C 1 -W 30 >"$work/document" &
  local sub=$!
  sleep 1
  mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t iotsphere/devices/pi-heater/shadow/reported -m '{"state":{"temperature":48.5}}'
  wait "$sub" || { cat "$work/gateway.log" >&2; kill -9 "$pid"; echo "no document from the emulated gateway" >&2; return 1; }
  document=$(cat "$work/document")
  case "$document" in *'"version":1'*) ;; *) echo "unexpected document: $document" >&2; kill -9 "$pid"; return 1 ;; esac
  kill -TERM "$pid"
  status=0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; echo "no exit within 10 s of SIGTERM" >&2; return 1; fi
  wait "$pid" || status=$?
  rm -rf "$work"
  [ "$status" -eq 0 ] || { echo "exit status $status after SIGTERM" >&2; return 1; }
  echo "  reported -> document under $qemu, SIGTERM -> exit 0"
}
profile="${PROFILE:-cross-check}"
for spec in aarch64-unknown-linux-gnu:qemu-aarch64:/usr/aarch64-linux-gnu \
            armv7-unknown-linux-gnueabihf:qemu-arm:/usr/arm-linux-gnueabihf; do
  IFS=: read -r target qemu sysroot <<<"$spec"
  cross_toolchain "$target"
  cargo build --profile "$profile" --locked -p iotsphere-gateway --target "$target"
  binary="$target_dir/$target/$profile/iotsphere-gateway"
  version=$("$qemu" -L "$sysroot" "$binary" --version)
  echo "$target: $version ($(stat -c %s "$binary") bytes)"
  smoke_run "$qemu" "$sysroot" "$binary"
done
