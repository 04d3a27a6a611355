# Shared by run.sh and profile.sh (sourced): build, start and stop brokers on free
# loopback ports, and stop everything this script started when it exits.
# Expects: root (the workspace), work (a temp dir, removed on exit).

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)
# Every step also notes the load average and the compilers running (other builds on a
# shared machine), for RESULTS.md.
load_notes=()
step() {
  echo "== $* ($(( $(date +%s) - started )) s)" >&2
  load_notes+=("$(cut -d' ' -f1 /proc/loadavg)/$(pgrep -c -x rustc || true)")
}

# 10,000 idle connections need 10,000 descriptors in the broker and in loadgen.
raise_fd_limit() {
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
  ulimit -n "$hard" 2>/dev/null || true
  fd_limit=$(ulimit -n)
}

build() { # sets gateway_bin loadgen double_bin
  step "build (release): gateway, loadgen, mongo-double"
  (cd "$root" && cargo build --release --quiet -p iotsphere-gateway -p iotsphere-bench -p mongo-double)
  local target_dir=${CARGO_TARGET_DIR:-$root/target}
  gateway_bin=$target_dir/release/iotsphere-gateway
  loadgen=$target_dir/release/loadgen
  refconsumer=$target_dir/release/refconsumer
  double_bin=$target_dir/release/mongo-double
}

find_mosquitto() { # sets mosquitto_bin; installs mosquitto when missing
  mosquitto_bin=$(command -v mosquitto || true)
  [ -n "$mosquitto_bin" ] || mosquitto_bin=/usr/sbin/mosquitto
  if [ ! -x "$mosquitto_bin" ]; then
    step "install mosquitto"
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get install -y -q mosquitto >/dev/null 2>&1 \
      || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q mosquitto >/dev/null; }
    mosquitto_bin=/usr/sbin/mosquitto
  fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local port
  while :; do
    port=$(( 20000 + RANDOM % 20000 ))
    listening "$port" || { echo "$port"; return; }
  done
}

wait_port() { # PORT PID NAME
  local i
  for i in $(seq 200); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited at startup" >&2; return 1; }
    sleep 0.05
  done
  echo "$3 did not listen on $1 within 10 s" >&2
  return 1
}

stop() { # PID: stops it (SIGTERM, SIGKILL after 5 s) and forgets it (a pid may be reused later)
  local pid i rest=()
  kill "$1" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || rest+=("$pid"); done
  pids=("${rest[@]}")
}

mosquitto_conf() { # PORT [MAX_QUEUED]
  cat <<EOF
listener $1 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_inflight_messages 100
max_queued_messages ${2:-10000}
max_connections -1
log_type error
EOF
}

start_mosquitto() { # [MAX_QUEUED]: sets MOSQ_PORT MOSQ_PID
  MOSQ_PORT=$(free_port)
  mosquitto_conf "$MOSQ_PORT" "$@" >"$work/mosquitto-$MOSQ_PORT.conf"
  "$mosquitto_bin" -c "$work/mosquitto-$MOSQ_PORT.conf" >"$work/mosquitto-$MOSQ_PORT.log" 2>&1 &
  MOSQ_PID=$!
  pids+=("$MOSQ_PID")
  wait_port "$MOSQ_PORT" "$MOSQ_PID" mosquitto
}

gateway_env() { # PORT HTTP_PORT DATA_DIR
  echo "IOTSPHERE__MQTT__LISTEN=127.0.0.1:$1 IOTSPHERE__HTTP__LISTEN=127.0.0.1:$2" \
    "IOTSPHERE__GATEWAY__DATA_DIR=$3 IOTSPHERE__LOG__LEVEL=warn" \
    "IOTSPHERE__MQTT__MAX_CONNECTIONS=20000" \
    "IOTSPHERE__SHADOW__RATE_PER_SEC=1000 IOTSPHERE__SHADOW__RATE_BURST=1000"
}

outbox_env() { # MongoDB configured but unreachable: every reading stays in the outbox
  echo "IOTSPHERE__MONGODB__URI=mongodb://127.0.0.1:$(free_port)/"
}

start_gateway() { # [NAME=VALUE…] extra settings; sets GW_PORT GW_HTTP GW_DATA GW_PID; fresh data dir
  GW_PORT=$(free_port)
  GW_HTTP=$(free_port)
  local dir=$work/gateway-$GW_PORT
  GW_DATA=$dir/data
  mkdir -p "$dir"
  cp "$root/config/gateway.toml" "$dir/gateway.toml"
  # shellcheck disable=SC2046 # the words are NAME=VALUE pairs without spaces
  env $(gateway_env "$GW_PORT" "$GW_HTTP" "$GW_DATA") "$@" \
    "$gateway_bin" run --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
  GW_PID=$!
  pids+=("$GW_PID")
  wait_port "$GW_PORT" "$GW_PID" gateway
}

start_double() { # [PORT]: mongo-double (replica set rs0, in memory); sets MD_PORT MD_PID MD_URI
  MD_PORT=${1:-$(free_port)}
  "$double_bin" --port "$MD_PORT" >"$work/mongo-double-$MD_PORT.log" 2>&1 &
  MD_PID=$!
  pids+=("$MD_PID")
  wait_port "$MD_PORT" "$MD_PID" mongo-double
  MD_URI="mongodb://127.0.0.1:$MD_PORT/?replicaSet=rs0"
}

wait_uplink() { # MODE [FIELD]: until the gateway's /health/uplink says FIELD (default mode) is MODE (10 s at most)
  local i field=${2:-mode}
  for i in $(seq 100); do
    curl -fsS "http://127.0.0.1:$GW_HTTP/health/uplink" 2>/dev/null | grep -q "\"$field\":\"$1\"" && return 0
    sleep 0.1
  done
  echo "the gateway's uplink did not reach $field $1 within 10 s" >&2
  return 1
}
