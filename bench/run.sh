#!/usr/bin/env bash
# Benchmarks of iotsphere-gateway side by side with mosquitto, in one run (bench/README.md).
#
#   bash bench/run.sh
#
# Builds the gateway, loadgen and mongo-double (release), starts mosquitto and the gateway
# on free loopback ports, runs fan-in (1) and idle memory (4) against both, alternating
# (mosquitto, gateway, … in every round), then round trip (2), MongoDB change → delta (3),
# telemetry ingest into MongoDB (6), outbox append and replay (7), many gateways' change
# streams (8), active/standby failover (9) and reconnect storm (5) against the gateway
# (with a mongo-double as its MongoDB for 3, 6, 7, 8, 9), and writes
# bench/RESULTS.md (+ the raw JSON lines in bench/results.jsonl). About 8 minutes on 2
# cores once built. Everything it started is
# stopped on exit. Knobs (environment): ROUNDS (2), IDLE_SIZES ("1000 10000"),
# IDLE_HOLD (5 s), ONLY (the sections to run, default all: "fanin roundtrip mongochange
# ingest outbox fleet failover idle storm").
set -euo pipefail

bench_dir=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$bench_dir/.." && pwd)
work=$(mktemp -d /tmp/iotsphere-bench.XXXXXX)
# shellcheck source=bench/common.sh
source "$bench_dir/common.sh"

ROUNDS=${ROUNDS:-2}
IDLE_SIZES=${IDLE_SIZES:-"1000 10000"}
IDLE_HOLD=${IDLE_HOLD:-5}
ONLY=${ONLY:-"fanin roundtrip mongochange ingest outbox fleet failover idle storm"}
want() { [[ " $ONLY " == *" $1 "* ]]; }
command_line="ROUNDS=$ROUNDS IDLE_SIZES=\"$IDLE_SIZES\" IDLE_HOLD=$IDLE_HOLD ONLY=\"$ONLY\" bash bench/run.sh"
started_at=$(date -u +"%Y-%m-%d %H:%M:%S UTC")
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

raise_fd_limit
build
find_mosquitto
mosquitto_version=$("$mosquitto_bin" -h 2>/dev/null | head -1 || true)

results=$work/results.jsonl
: >"$results"
failures=()
lg() { # loadgen ARGS…: one JSON line into the results; a failure is noted, not fatal
  if ! "$loadgen" "$@" >>"$results"; then
    failures+=("loadgen $*")
    echo "!! loadgen failed: $*" >&2
  fi
}

# 1. Fan-in, against every broker in turn, each round. Brokers:
#   mosquitto        the reference
#   gateway          as the issue asks: shadow engine attached, no uplink (telemetry only
#                    passes through the broker)
#   gateway-outbox   MongoDB configured but unreachable: every reading also goes into the
#                    sled outbox from the router (src/ingest.rs), QoS 1 acked after fsync
# Modes:
#   max        QoS 0, closed loop (each publisher keeps ≤ 20 messages not yet received):
#              the most a broker delivers without loss
#   20k        QoS 0 at 20,000 msg/s: latency at a fixed load
#   20k-qos1   QoS 1 at 20,000 msg/s: latency and PUBACK latency
#   overload   QoS 1, open loop: what a broker does when publishers outrun the subscriber
fanin_modes=(
  "max|--qos 0 --window 20 --messages 200000"
  "20k|--qos 0 --rate 20000 --messages 100000"
  "20k-qos1|--qos 1 --rate 20000 --messages 100000"
  "overload|--qos 1 --messages 200000"
)
if want fanin; then
  step "fan-in: mosquitto, gateway, gateway-outbox; $ROUNDS rounds"
  start_mosquitto
  start_gateway
  plain_port=$GW_PORT plain_pid=$GW_PID
  start_gateway "$(outbox_env)"
  outbox_port=$GW_PORT outbox_pid=$GW_PID
  for round in $(seq "$ROUNDS"); do
    for mode in "${fanin_modes[@]}"; do
      tag=${mode%%|*}
      # shellcheck disable=SC2206 # the flags split on spaces
      flags=(${mode#*|})
      for broker in "mosquitto $MOSQ_PORT $MOSQ_PID" "gateway $plain_port $plain_pid" \
        "gateway-outbox $outbox_port $outbox_pid"; do
        read -r label port pid <<<"$broker"
        lg --broker "127.0.0.1:$port" --label "$label" --pid "$pid" --tag "$tag" --round "$round" \
          --deadline 60 fanin --publishers 100 --payload 256 "${flags[@]}"
      done
    done
  done
  stop "$MOSQ_PID"
fi

# 2. Round trip, gateway only (brokers warm from the fan-in; the shadows are new).
if want roundtrip; then
  step "round trip: gateway, gateway-outbox"
  if [ -z "${plain_pid:-}" ]; then # the fan-in's brokers, when it did not run
    start_gateway
    plain_port=$GW_PORT plain_pid=$GW_PID
    start_gateway "$(outbox_env)"
    outbox_port=$GW_PORT outbox_pid=$GW_PID
  fi
  for round in $(seq "$ROUNDS"); do
    for broker in "gateway $plain_port $plain_pid" "gateway-outbox $outbox_port $outbox_pid"; do
      read -r label port pid <<<"$broker"
      lg --broker "127.0.0.1:$port" --label "$label" --pid "$pid" --tag 1k --round "$round" \
        --deadline 60 roundtrip --devices 1000 --rounds 3 --rate 500
    done
  done
  stop "$plain_pid"
  stop "$outbox_pid"
fi

# 3. MongoDB change → delta: the gateway with its uplink to a mongo-double (replica set,
# so a change stream), a fresh pair each round; then once with polling
# (change_streams = "off", poll_interval_ms as in config/gateway.toml); then once with
# every gateway update taking 20 ms in the server (a distant MongoDB: the delta must not
# wait for the gateway's own writes, e.g. of the change stream's resume token).
if want mongochange; then
  step "MongoDB change -> delta: change stream, $ROUNDS rounds; polling once; slow MongoDB once"
  for round in $(seq "$ROUNDS") polling slow; do
    start_double
    if [ "$round" = slow ]; then
      start_gateway "IOTSPHERE__MONGODB__URI=$MD_URI" IOTSPHERE__GATEWAY__ID=gw-bench
      wait_uplink change_stream
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag gateway-updates-20ms --round "$((ROUNDS + 2))" \
        --deadline 90 mongochange --mongo "$MD_URI" --devices 200 --rounds 2 --rate 100 --settle-ms 5000 \
        --slow-app iotsphere-gateway/gw-bench --slow-ms 20
    elif [ "$round" = polling ]; then
      start_gateway "IOTSPHERE__MONGODB__URI=$MD_URI" IOTSPHERE__MONGODB__CHANGE_STREAMS=off
      wait_uplink polling
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag polling --round "$((ROUNDS + 1))" \
        --deadline 60 mongochange --mongo "$MD_URI" --devices 1000 --rounds 3 --rate 500 --settle-ms 3000
    else
      start_gateway "IOTSPHERE__MONGODB__URI=$MD_URI"
      wait_uplink change_stream
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag change-stream --round "$round" \
        --deadline 60 mongochange --mongo "$MD_URI" --devices 1000 --rounds 3 --rate 500
    fi
    stop "$GW_PID"
    stop "$MD_PID"
  done
fi

# 6. Telemetry ingest into MongoDB: 100 publishers, QoS 1 as fast as PUBACKs allow, no
# subscriber; loadgen then waits until every reading is in `telemetry`. Fresh pair per round.
# The reference in the same round: mosquitto (queueing up to a million messages for a slow
# subscriber, so it drops none) + refconsumer writing to a fresh mongo-double.
if want ingest; then
  step "telemetry ingest into MongoDB: gateway and mosquitto + refconsumer, $ROUNDS rounds"
  for round in $(seq "$ROUNDS"); do
    start_double
    start_mosquitto 1000000
    "$refconsumer" --broker "127.0.0.1:$MOSQ_PORT" --mongo "$MD_URI" --deadline 120 \
      >"$work/refconsumer-$round.json" 2>"$work/refconsumer-$round.log" &
    ref_pid=$!
    pids+=("$ref_pid")
    for _ in $(seq 100); do
      grep -q subscribed "$work/refconsumer-$round.log" && break
      sleep 0.1
    done
    lg --broker "127.0.0.1:$MOSQ_PORT" --label mosquitto-refconsumer --pid "$MOSQ_PID" --tag ingest --round "$round" \
      --deadline 90 fanin --publishers 100 --payload 256 --qos 1 --messages 100000 --no-subscriber --mongo "$MD_URI"
    stop "$ref_pid"
    stop "$MOSQ_PID"
    stop "$MD_PID"
    start_double
    start_gateway "IOTSPHERE__MONGODB__URI=$MD_URI"
    wait_uplink change_stream
    lg --broker "127.0.0.1:$GW_PORT" --label gateway-mongodb --pid "$GW_PID" --tag ingest --round "$round" \
      --deadline 90 fanin --publishers 100 --payload 256 --qos 1 --messages 100000 --no-subscriber --mongo "$MD_URI"
    stop "$GW_PID"
    stop "$MD_PID"
  done
fi

# 7. Outbox: MongoDB down (the URI names a closed port) → append; then mongo-double starts on
# that port → replay. The data_dir size and the outbox's own count are recorded between.
if want outbox; then
  step "outbox: append with MongoDB down, replay when it is back; $ROUNDS rounds"
  for round in $(seq "$ROUNDS"); do
    closed=$(free_port)
    start_gateway "IOTSPHERE__MONGODB__URI=mongodb://127.0.0.1:$closed/?replicaSet=rs0"
    prefix="obx$round-$$-"
    lg --broker "127.0.0.1:$GW_PORT" --label gateway-outbox --pid "$GW_PID" --tag outbox-append --round "$round" \
      --id-prefix "$prefix" --deadline 60 fanin --publishers 100 --payload 256 --qos 1 --messages 100000 --no-subscriber
    health=$(curl -fsS "http://127.0.0.1:$GW_HTTP/health/uplink" || echo '{}')
    printf '{"scenario":"outbox-disk","broker":"gateway-outbox","tag":"outbox","round":%s,"command":"du -sb DATA_DIR; curl /health/uplink","results":{"data_dir_bytes":%s,"outbox_items":%s,"outbox_bytes":%s}}\n' \
      "$round" "$(du -sb "$GW_DATA" | cut -f1)" \
      "$(grep -o '"items":[0-9]*' <<<"$health" | head -1 | cut -d: -f2)" \
      "$(grep -o '"bytes":[0-9]*' <<<"$health" | head -1 | cut -d: -f2)" >>"$results"
    # Items that waited more than 5 s count as a replay for the gateway (paced at
    # outbox.replay_rate), younger ones as live traffic (src/uplink/writer.rs REPLAY_AGE).
    sleep 6
    start_double "$closed"
    lg --broker "127.0.0.1:$GW_PORT" --label gateway-outbox --pid "$GW_PID" --tag outbox-replay --round "$round" \
      --id-prefix "$prefix" --deadline 120 landed --mongo "$MD_URI" --publishers 100 --messages 100000
    stop "$GW_PID"
    stop "$MD_PID"
  done
fi

# 8. Many gateways on one MongoDB: G simulated gateways' change streams (the gateway's own
# pipeline, one client each) on a fresh mongo-double, 1,000 devices spread over them, 2,000
# cloud changes; with the ownership $match and without it.
if want fleet; then
  step "many gateways on one MongoDB: 1, 10, 50 change streams, with and without the \$match"
  for gateways in 1 10 50; do
    for filter in on off; do
      start_double
      flag=()
      [ "$filter" = off ] && flag=(--no-filter)
      lg --label mongo-double --pid "$MD_PID" --tag "$filter" --round "$gateways" \
        --deadline 60 fleetwatch --mongo "$MD_URI" --gateways "$gateways" --devices 1000 --changes 2000 "${flag[@]}"
      stop "$MD_PID"
    done
  done
fi

# 9. Active/standby failover: a fresh mongo-double; gateway A (gw-a) takes the lease
# site-1, then gateway B (gw-b) joins as its standby; loadgen puts 1,000 devices on A, kills
# A (SIGKILL) and measures B's takeover while a cloud service changes every device's
# setpoint in MongoDB. Once with lease_ttl_ms 2000, once with 10000 (the default).
if want failover; then
  step "active/standby failover: lease TTL 2000 and 10000 ms"
  for ttl in 2000 10000; do
    start_double
    pair=("IOTSPHERE__MONGODB__URI=$MD_URI" IOTSPHERE__MONGODB__LEASE=site-1 "IOTSPHERE__MONGODB__LEASE_TTL_MS=$ttl")
    start_gateway "${pair[@]}" IOTSPHERE__GATEWAY__ID=gw-a
    wait_uplink change_stream
    wait_uplink active lease
    active_port=$GW_PORT active_pid=$GW_PID
    start_gateway "${pair[@]}" IOTSPHERE__GATEWAY__ID=gw-b
    wait_uplink change_stream
    wait_uplink standby lease
    lg --broker "127.0.0.1:$active_port" --label gateway-pair --pid "$GW_PID" --tag "ttl-$ttl" --round 1 \
      --deadline 90 failover --mongo "$MD_URI" --standby "127.0.0.1:$GW_PORT" --active-pid "$active_pid" \
      --lease site-1 --lease-ttl-ms "$ttl" --devices 1000
    stop "$active_pid" # killed by loadgen: reaped here (or stopped, if loadgen failed first)
    stop "$GW_PID"
    stop "$MD_PID"
  done
fi

# 4. Idle memory: a fresh broker for every run, so "before" is a cold process.
if want idle; then
  for size in $IDLE_SIZES; do
    if [ "$size" -ge "$fd_limit" ]; then
      echo "note: $size connections exceed the open-files limit $fd_limit; loadgen caps them" >&2
    fi
    step "idle: $size connections, mosquitto and gateway, $ROUNDS rounds"
    for round in $(seq "$ROUNDS"); do
      start_mosquitto
      lg --broker "127.0.0.1:$MOSQ_PORT" --label mosquitto --pid "$MOSQ_PID" --tag "$size" --round "$round" \
        --deadline 90 idle --connections "$size" --hold "$IDLE_HOLD"
      stop "$MOSQ_PID"
      start_gateway
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag "$size" --round "$round" \
        --deadline 90 idle --connections "$size" --hold "$IDLE_HOLD"
      stop "$GW_PID"
    done
  done
fi

# 5. Reconnect storm, gateway only, a fresh gateway each time; the last one after a power
# cut (connections dropped without DISCONNECT).
if want storm; then
  step "storm: gateway"
  for round in $(seq "$ROUNDS") abrupt; do
    start_gateway
    if [ "$round" = abrupt ]; then
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag abrupt --round "$((ROUNDS + 1))" \
        --deadline 60 storm --devices 1000 --abrupt
    else
      lg --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --tag clean --round "$round" \
        --deadline 60 storm --devices 1000
    fi
    stop "$GW_PID"
  done
fi

step "write bench/RESULTS.md"
cp "$results" "$bench_dir/results.jsonl"
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
memory=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/run.sh\` — do not edit by hand; run it again. Why a target is missed"
  echo "and what to change: [PROFILE.md](PROFILE.md). How to run: [README.md](README.md)."
  echo
  echo "- **Date**: $started_at; the run took $(( $(date +%s) - started )) s (build included)."
  echo "- **Command**: \`$command_line\` (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target})"
  echo "- **Machine**: $(nproc) CPUs ($cpu_model), $memory RAM, Linux $(uname -r);"
  echo "  load average at start $load_at_start (the machine is shared: compare within a round, not across runs);"
  echo "  at each step, 1-minute load average / rustc processes of other builds running: ${load_notes[*]};"
  echo "  open-files limit $fd_limit."
  echo "- **mosquitto**: $mosquitto_version, config generated per start:"
  echo "  \`$(mosquitto_conf PORT | paste -sd ';' | sed 's/;/; /g')\`."
  echo "  TCP_NODELAY on (its best latency); the gateway's broker (vendor/rumqttd, patched) sets"
  echo "  TCP_NODELAY on accepted sockets too and listens with a backlog of 1024."
  echo "- **gateway**: release build, \`config/gateway.toml\` with"
  echo "  \`$(gateway_env PORT HTTP DIR)\`; shadow engine attached (it subscribes to the shadow"
  echo "  request topics only; telemetry goes through the broker to the load generator)."
  echo "- **gateway-outbox**: the same plus \`IOTSPHERE__MONGODB__URI=mongodb://127.0.0.1:CLOSED_PORT/\`:"
  echo "  the uplink is configured but down, so every telemetry reading is also written to the"
  echo "  sled outbox inside the router, and QoS 1 readings are acknowledged after an fsync."
  echo "  In section 7 the same, then tests/mongo-double is started on that port (replay)."
  echo "- **gateway with MongoDB** (sections 3 and 6): the same plus"
  echo "  \`IOTSPHERE__MONGODB__URI=mongodb://127.0.0.1:PORT/?replicaSet=rs0\`, a fresh"
  echo "  tests/mongo-double (release build, replica set rs0, in memory) per run: the change"
  echo "  stream is the double's; polling adds \`IOTSPHERE__MONGODB__CHANGE_STREAMS=off\`"
  echo "  (\`poll_interval_ms\` 1000). The double runs on the same 2 cores."
  echo "- **many gateways** (section 8): no gateway process; loadgen opens G change streams with"
  echo "  the gateway's own pipeline (\`uplink::watcher::change_stream_pipeline\`), one MongoDB client"
  echo "  each, on a fresh mongo-double; \"broker CPU\" is the double's."
  echo "- **active/standby pair** (section 9): two gateways as in sections 3 and 6 plus"
  echo "  \`IOTSPHERE__MONGODB__LEASE=site-1 IOTSPHERE__MONGODB__LEASE_TTL_MS=TTL\` and"
  echo "  \`IOTSPHERE__GATEWAY__ID=gw-a\` / \`gw-b\` on one fresh mongo-double; loadgen kills gw-a"
  echo "  (SIGKILL); \"broker CPU\" is the standby's."
  echo "- **loadgen**: one runtime thread, raw MQTT 3.1.1 client (TCP_NODELAY on every socket),"
  echo "  256-byte payloads (valid JSON telemetry readings); latency = receive time − send time"
  echo "  written in the payload (same clock). Each broker's CPU time (/proc/PID/stat) is"
  echo "  measured over each run: CPU per message is less sensitive to the machine's other load"
  echo "  than throughput is."
  if [ ${#failures[@]} -gt 0 ]; then
    echo "- **Failed runs** (no row below):"
    for f in "${failures[@]}"; do echo "  - \`$f\`"; done
  fi
  echo
  "$loadgen" summarize "$results"
} >"$bench_dir/RESULTS.md"
step "done: bench/RESULTS.md"
