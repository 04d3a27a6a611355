#!/usr/bin/env bash
# Builds the gateway's Debian packages with cargo-deb ([package.metadata.deb] in Cargo.toml)
# and writes them as dist/iotsphere-gateway_<version>-<revision>_<arch>.deb:
#
#   bash scripts/package-deb.sh [amd64|arm64|armhf ...]    # default: all three
#
# PROFILE=release (the default) is what operators install: optimized, thin LTO, stripped.
# CI packages PROFILE=cross-check, the unoptimized builds scripts/cross-build.sh has just
# made and smoke-tested (cargo finds them fresh and builds nothing again for arm64/armhf).
#
# A package holds /usr/bin/iotsphere-gateway; /etc/iotsphere-gateway/gateway.toml, a
# conffile (upgrades keep the operator's edits), made here from config/gateway.toml with
# the package's paths and JSON logs for the journal, and the same file as
# /usr/share/iotsphere-gateway/gateway.toml (the unit starts once the two differ); the
# systemd unit deploy/iotsphere-gateway.service, enabled on install, not started; the
# maintainer scripts of deploy/debian/ (the iotsphere system user, /var/lib/iotsphere-gateway,
# purge deletes the data); the monitoring kit in /usr/share/iotsphere-gateway/.
# scripts/test-deb.sh installs, upgrades, removes and purges the amd64 one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# Pinned; `cargo install` keeps it in ~/.cargo/bin, so this builds it once per machine.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb
fi

profile="${PROFILE:-release}"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)
read -r target_dir version < <(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(meta["target_directory"], next(p["version"] for p in meta["packages"] if p["name"] == "iotsphere-gateway"))')

# The packages' libc6 dependency (Cargo.toml), checked against each binary below.
libc_min=$(sed -n 's/^depends = "libc6 (>= \([0-9.]*\)).*/\1/p' Cargo.toml)
[ -n "$libc_min" ] || { echo "Cargo.toml: no libc6 (>= …) in [package.metadata.deb] depends" >&2; exit 1; }

# apt and lintian read the package's changelog: its newest entry must be this version.
if ! head -1 deploy/debian/changelog | grep -q "^iotsphere-gateway ($version-"; then
  echo "deploy/debian/changelog: the first entry is not version $version (Cargo.toml); add one" >&2
  exit 1
fi

# packaged_config FILE: config/gateway.toml with the package's paths and JSON logs. Each
# edit must apply: a config/gateway.toml that no longer matches stops the build here.
packaged_config() {
  local out=$1
  {
    cat <<'HEADER'
# /etc/iotsphere-gateway/gateway.toml, installed by the iotsphere-gateway package.
# The service is enabled but does not start while this file is the packaged default
# (/usr/share/iotsphere-gateway/gateway.toml): set at least [gateway] id, check it with
#   iotsphere-gateway check-config --config /etc/iotsphere-gateway/gateway.toml
# then `systemctl start iotsphere-gateway`; later edits: `systemctl reload iotsphere-gateway`.
# Upgrades keep your edits (when the packaged default changed too, apt asks which to keep).
#
HEADER
    sed -e 's|^data_dir = "./data" .*|data_dir = "/var/lib/iotsphere-gateway"  # the only place the unit lets the gateway write (StateDirectory)|' \
        -e 's|^cert = "certs/dev/server.crt" .*|cert = "/etc/iotsphere-gateway/server.crt"  # PEM|' \
        -e 's|^key = "certs/dev/server.key" .*|key = "/etc/iotsphere-gateway/server.key"    # PEM (PKCS#8)|' \
        -e 's|^format = "pretty" .*|format = "json"                  # JSON lines for the journal (journalctl -u iotsphere-gateway)|' \
        config/gateway.toml
  } >"$out"
  local setting
  for setting in 'data_dir = "/var/lib/iotsphere-gateway"' 'cert = "/etc/iotsphere-gateway/server.crt"' \
                 'key = "/etc/iotsphere-gateway/server.key"' 'format = "json"'; do
    if ! grep -q "^$setting" "$out"; then
      echo "the packaged configuration lacks $setting: config/gateway.toml changed, update packaged_config" >&2
      exit 1
    fi
  done
}

# CI's unoptimized packages only serve scripts/test-deb.sh: quicker, lighter xz (about
# 10 s instead of 40 s a package here) for a deb a fifth larger.
compression=()
[ "$profile" = release ] || compression=(--fast)

mkdir -p dist
for arch in "${arches[@]}"; do
  case $arch in
    amd64) triple=x86_64-unknown-linux-gnu ;;
    arm64) triple=aarch64-unknown-linux-gnu ;;
    armhf) triple=armv7-unknown-linux-gnueabihf ;;
    *) echo "unknown architecture '$arch': amd64, arm64 or armhf" >&2; exit 2 ;;
  esac
  cross_toolchain "$triple"
  cargo build --profile "$profile" --locked -p iotsphere-gateway --target "$triple"
  newest_glibc=$(objdump -T "$target_dir/$triple/$profile/iotsphere-gateway" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  if [ "$(printf '%s\n' "GLIBC_$libc_min" "$newest_glibc" | sort -V | tail -1)" != "GLIBC_$libc_min" ]; then
    echo "the $arch binary needs $newest_glibc: raise libc6 (>= $libc_min) in Cargo.toml's depends" >&2
    exit 1
  fi
  packaged_config "$target_dir/$triple/$profile/packaged-gateway.toml"
  rm -f dist/iotsphere-gateway_*_"$arch".deb
  cargo deb "${compression[@]}" --no-build --profile "$profile" --target "$triple" -p iotsphere-gateway --output dist/
done
ls -l dist/*.deb
