# Shell helpers sourced by the scripts of scripts/: installing from Debian's packages and
# the cross toolchains. Not run on its own.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PACKAGE...: quietly; refreshes the package lists only when the install fails.
apt_install() {
  echo "installing $*"
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$@" >/dev/null; }
}

# cross_toolchain TRIPLE: the linker .cargo/config.toml names for it (Debian's cross gcc and
# libc) and Rust's standard library for it.
cross_toolchain() {
  case $1 in
    aarch64-unknown-linux-gnu)
      command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
    armv7-unknown-linux-gnueabihf)
      command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
  esac
  rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}
