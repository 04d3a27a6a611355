#!/usr/bin/env bash
# Builds the gateway for the Raspberry Pi (aarch64 and armv7) with Debian's cross
# compilers, and runs each binary's --version under qemu-user as a smoke test.
# PROFILE=release (default: cross-check, unoptimized, what CI uses to stay fast).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  as_root apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "${need[@]}" >/dev/null; }
fi

target_dir="${CARGO_TARGET_DIR:-target}"
profile="${PROFILE:-cross-check}"
for spec in aarch64-unknown-linux-gnu:qemu-aarch64:/usr/aarch64-linux-gnu \
            armv7-unknown-linux-gnueabihf:qemu-arm:/usr/arm-linux-gnueabihf; do
  IFS=: read -r target qemu sysroot <<<"$spec"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  cargo build --profile "$profile" --locked -p iotsphere-gateway --target "$target"
  binary="$target_dir/$target/$profile/iotsphere-gateway"
  version=$("$qemu" -L "$sysroot" "$binary" --version)
  echo "$target: $version ($(stat -c %s "$binary") bytes)"
done
