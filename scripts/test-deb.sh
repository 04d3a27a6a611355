#!/usr/bin/env bash
# Tests the amd64 Debian package (dist/, from scripts/package-deb.sh) the way an operator
# uses it, in a fresh Debian chroot (no docker engine needed; as root):
#   1. `apt install` of an older version (made here from the package: lower version, another
#      default configuration): the iotsphere user, the configuration root:iotsphere 0640 and
#      a conffile, /var/lib/iotsphere-gateway iotsphere 0750, the unit enabled (its
#      symlink: no systemd runs in a chroot) but its start skipped while the configuration
#      is the default, `check-config` of the packaged configuration as the service user;
#   2. the operator edits the configuration: the start condition passes, the gateway runs
#      as the service user (health 200 "writable", a heater's report stored in data_dir);
#   3. `apt install` of this version over it: the edits kept, the new default beside them
#      (.dpkg-dist), owner and mode kept, the data kept, the unit still enabled;
#   4. `apt remove`: the program and the unit gone, configuration, data and user kept;
#   5. `apt purge`: configuration, data and the unit's symlinks gone;
#   6. an upgrade without edits takes the new default, and the start stays skipped.
# Then lintian on every package in dist/ (tags we keep are explained in
# deploy/debian/lintian-overrides).
#
# The chroot is made once with debootstrap (minbase, the host's Debian release, from the
# mirror the host's apt uses) and cached as a tarball outside the clone; each run unpacks
# a fresh copy (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

debs=(dist/iotsphere-gateway_*_amd64.deb)
[ -f "${debs[0]}" ] || { echo "no dist/iotsphere-gateway_*_amd64.deb: run scripts/package-deb.sh amd64" >&2; exit 1; }
[ ${#debs[@]} -eq 1 ] || { echo "several amd64 packages in dist/: ${debs[*]}" >&2; exit 1; }
deb=${debs[0]}

# The host's release and the mirror its apt uses (deb822 or one-line sources).
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
fi
cache="$HOME/.cache/iotsphere-gateway/deb-chroot"
base="$cache/$codename-minbase.tar"
if [ ! -f "$base" ]; then
  echo "making the $codename chroot (once; cached in $cache)"
  mkdir -p "$cache"
  fresh=$(mktemp -d "$cache/debootstrap.XXXXXX")
  # adduser is what the package depends on beyond minbase.
  debootstrap --variant=minbase --include=adduser "$codename" "$fresh" "$mirror" >"$cache/debootstrap.log"
  tar -C "$fresh" -cf "$base.partial" .
  mv "$base.partial" "$base"
  rm -rf "$fresh"
fi

root=$(mktemp -d)
gateway_pid=""
cleanup() {
  [ -z "$gateway_pid" ] || kill -9 "$gateway_pid" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
chmod 755 "$root" # mktemp's 0700 would shut the service user out of its own /

in_root() { chroot "$root" "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
checks=0
check() { # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1
  shift
  "$@" || fail "$what"
  checks=$((checks + 1))
}
check_not() { # check_not DESCRIPTION COMMAND...: the command must fail
  local what=$1
  shift
  ! "$@" || fail "$what"
  checks=$((checks + 1))
}
quiet() { "$@" >/dev/null 2>&1; }
stat_of() { in_root stat -c '%U:%G %a' "$1"; }
apt_in_root() { in_root env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold "$@" >"$root/apt.log" 2>&1 || { cat "$root/apt.log" >&2; fail "apt-get $*"; }; }

config=/etc/iotsphere-gateway/gateway.toml
unit=/usr/lib/systemd/system/iotsphere-gateway.service
wants=/etc/systemd/system/multi-user.target.wants/iotsphere-gateway.service
version=$(dpkg-deb -f "$deb" Version)

# The older version: the same package with a lower version and another default setting.
older="$root/tmp/iotsphere-gateway_older_amd64.deb"
unpacked="$root/tmp/older-package"
dpkg-deb -R "$deb" "$unpacked"
sed -i "s/^Version: .*/Version: $version~older/" "$unpacked/DEBIAN/control"
for copy in etc/iotsphere-gateway/gateway.toml usr/share/iotsphere-gateway/gateway.toml; do
  sed -i 's/^max_inflight = 100 /max_inflight = 50  /' "$unpacked/$copy"
  grep -q '^max_inflight = 50 ' "$unpacked/$copy" || fail "could not change $copy for the older version"
  if [ -f "$unpacked/DEBIAN/md5sums" ]; then
    sum=$(cd "$unpacked" && md5sum "$copy")
    sed -i "s|^[0-9a-f]*  $copy\$|$sum|" "$unpacked/DEBIAN/md5sums"
  fi
done
dpkg-deb --root-owner-group -b "$unpacked" "$older" >/dev/null
rm -rf "$unpacked"
cp "$deb" "$root/tmp/iotsphere-gateway_amd64.deb"

# The unit's ExecCondition, run as the unit runs it (as the service user).
start_condition() {
  local condition
  condition=$(sed -n 's/^ExecCondition=\/bin\/sh -c //p' "$root$unit")
  condition=${condition#\'}
  condition=${condition%\'}
  in_root setpriv --reuid=iotsphere --regid=iotsphere --init-groups /bin/sh -c "$condition" 2>/dev/null
}
# Its exit status: 0 starts; 1 (1-254 for systemd) skips the start without a failure.
start_condition_status() {
  local status=0
  start_condition || status=$?
  echo "$status"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== 1. apt install ($version~older)"
apt_in_root install ./tmp/iotsphere-gateway_older_amd64.deb
check "the older version is installed" test "$(in_root dpkg-query -W -f='${Version}' iotsphere-gateway)" = "$version~older"
check "/usr/bin/iotsphere-gateway runs" quiet in_root /usr/bin/iotsphere-gateway --version
check "the iotsphere system user, no login" test "$(in_root getent passwd iotsphere | cut -d: -f6,7)" = "/var/lib/iotsphere-gateway:/usr/sbin/nologin"
check "a system uid" test "$(in_root id -u iotsphere)" -lt 1000
check "the iotsphere group" quiet in_root getent group iotsphere
check "the configuration is root:iotsphere 0640" test "$(stat_of $config)" = "root:iotsphere 640"
check "the configuration is a conffile" grep -q " $config " <<<"$(in_root dpkg-query -W -f='${Conffiles}' iotsphere-gateway)"
check "data_dir is iotsphere:iotsphere 0750" test "$(stat_of /var/lib/iotsphere-gateway)" = "iotsphere:iotsphere 750"
check "the packaged configuration: data_dir" grep -q '^data_dir = "/var/lib/iotsphere-gateway"' "$root$config"
check "the packaged configuration: JSON logs" grep -q '^format = "json"' "$root$config"
check "check-config accepts the packaged configuration, as the service user" \
  in_root setpriv --reuid=iotsphere --regid=iotsphere --init-groups /usr/bin/iotsphere-gateway check-config --config $config
check "the unit is installed" test -f "$root$unit"
check "the unit is enabled (multi-user.target.wants)" test "$(in_root readlink -f $wants)" = "$unit"
check "no start while the configuration is the packaged default" test "$(start_condition_status)" = 1

echo "== 2. the operator edits the configuration; the gateway runs as the service user"
sed -i 's/^id = "gw-dev-01" /id = "gw-boiler-room"/' "$root$config"
check "the edit applied" grep -q '^id = "gw-boiler-room"' "$root$config"
check "the start condition passes once edited" test "$(start_condition_status)" = 0
mqtt_port=$(free_port)
http_port=$(free_port)
# chroot itself, not in_root: chroot, setpriv and env each exec the next, so $! is the gateway.
chroot "$root" setpriv --reuid=iotsphere --regid=iotsphere --init-groups \
  env IOTSPHERE__MQTT__LISTEN="127.0.0.1:$mqtt_port" IOTSPHERE__HTTP__LISTEN="127.0.0.1:$http_port" \
  /usr/bin/iotsphere-gateway run --config $config >"$root/tmp/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$http_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
health=$(curl -s "http://127.0.0.1:$http_port/health") || { cat "$root/tmp/gateway.log" >&2; fail "no /health"; }
check "health: the store in data_dir is writable ($health)" grep -q '"store":"writable"' <<<"$health"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t iotsphere/devices/pi-heater/shadow/reported -m '{"state":{"temperature":48.5}}'
for _ in $(seq 1 50); do
  curl -s "http://127.0.0.1:$http_port/health" | grep -q '"shadows":1' && break
  sleep 0.1
done
check "the report is stored" grep -q '"shadows":1' <<<"$(curl -s "http://127.0.0.1:$http_port/health")"
check "logs are JSON lines" grep -q '^{"timestamp"' "$root/tmp/gateway.log"
kill -TERM "$gateway_pid"
wait "$gateway_pid" || fail "the gateway did not exit 0 on SIGTERM: $(cat "$root/tmp/gateway.log")"
gateway_pid=""
data_files=$(in_root find /var/lib/iotsphere-gateway -type f | wc -l)
check "the store is in data_dir, owned by the service user" test -z "$(in_root find /var/lib/iotsphere-gateway ! -user iotsphere)"

echo "== 3. apt install ($version) over it: an upgrade with a changed default configuration"
apt_in_root install ./tmp/iotsphere-gateway_amd64.deb
check "upgraded" test "$(in_root dpkg-query -W -f='${Version}' iotsphere-gateway)" = "$version"
check "the operator's edit is kept" grep -q '^id = "gw-boiler-room"' "$root$config"
check "the operator's file is the older default plus the edit" grep -q '^max_inflight = 50 ' "$root$config"
check "the new default is beside it" grep -q '^max_inflight = 100 ' "$root$config.dpkg-dist"
check "the pristine copy is the new default" cmp -s "$root/usr/share/iotsphere-gateway/gateway.toml" "$root$config.dpkg-dist"
check "owner and mode kept over the upgrade" test "$(stat_of $config)" = "root:iotsphere 640"
check "the data is kept" test "$(in_root find /var/lib/iotsphere-gateway -type f | wc -l)" -eq "$data_files"
check "still enabled" test "$(in_root readlink -f $wants)" = "$unit"
check "still starts (edited)" test "$(start_condition_status)" = 0

echo "== 4. apt remove"
apt_in_root remove iotsphere-gateway
check "the program is gone" test ! -e "$root/usr/bin/iotsphere-gateway"
check "the unit is gone" test ! -e "$root$unit"
check "dpkg keeps its configuration files" test "$(in_root dpkg-query -W -f='${db:Status-Abbrev}' iotsphere-gateway)" = "rc "
check "the configuration is kept" grep -q '^id = "gw-boiler-room"' "$root$config"
check "the data is kept" test "$(in_root find /var/lib/iotsphere-gateway -type f | wc -l)" -eq "$data_files"
check "the user is kept" quiet in_root getent passwd iotsphere

echo "== 5. apt purge"
apt_in_root purge iotsphere-gateway
check "the configuration is gone" test ! -e "$root/etc/iotsphere-gateway"
check "the data is gone" test ! -e "$root/var/lib/iotsphere-gateway"
check_not "no statoverride left" grep -q iotsphere <<<"$(in_root dpkg-statoverride --list)"
check_not "the unit's symlinks are gone" grep -q . <<<"$(find "$root/etc/systemd" -name 'iotsphere-gateway*')"
check_not "the package is forgotten" quiet in_root dpkg-query -W iotsphere-gateway

echo "== 6. an upgrade without edits takes the new default"
apt_in_root install ./tmp/iotsphere-gateway_older_amd64.deb
apt_in_root install ./tmp/iotsphere-gateway_amd64.deb
check "the configuration is the new default" cmp -s "$root$config" "$root/usr/share/iotsphere-gateway/gateway.toml"
check "no .dpkg-dist" test ! -e "$root$config.dpkg-dist"
check "the start is still skipped" test "$(start_condition_status)" = 1

echo "== lintian"
lintian --fail-on error,warning,info --display-info dist/*.deb
checks=$((checks + 1))

echo "$checks passed, 0 failed"
