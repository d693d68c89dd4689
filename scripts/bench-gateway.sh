#!/usr/bin/env bash
# make bench-gateway: purchases through seckill_gateway on the local stack, in one run
# (docs/BENCHMARKS.md has the figures):
#   (a) closed loop: wrk, 2 threads x BENCH_CONNECTIONS connections for BENCH_SECONDS, each
#       request a purchase by the next of BENCH_USERS users (tokens made up front) with a new
#       Idempotency-Key (new in every run) and wait_ms=0: the purchases/s the gateway accepts
#       (counted by the gateway: each produced to Kafka and acknowledged before its 202), its
#       CPU per purchase, and its peak RSS;
#   (b) open loop at half of (a)'s rate (benches/gateway_open_loop.rs), each purchase waiting
#       for its outcome (wait_ms=5000): click-to-outcome p50/p99, from each purchase's
#       scheduled time, once server_kafka has decided (a)'s purchases, on a fresh dev broker
#       with a new server_kafka and gateway (below);
#   (c) the same sale driven by client_kafka (its send rate, straight into Kafka). Last: it
#       leaves a backlog larger than the dev broker keeps (~5 MB a partition), which would
#       cut (b)'s purchases.
# Limits for the run: the per-user and per-address buckets are raised out of the way (every
# request comes from 127.0.0.1) and stated here; server_kafka serves the sale meanwhile.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_RUN=${BENCH_SECONDS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-128}
USERS=${BENCH_USERS:-20000}
# (b) first runs this long at its rate, not counted (its p99 is printed apart): the
# generator opens a connection per purchase in flight, all in the first second otherwise.
WARMUP=${BENCH_WARMUP_SECONDS:-2}
say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench-gateway: %s\n' "$*" >&2; exit 1; }

scripts/dev-stack.sh up >/dev/null
# The dev broker (librdkafka's mock) finds a fetch's offset by walking every message set the
# partition keeps (its own "FIXME: Maintain an index"), and a consumer that has caught up
# walks all of them on every fetch: a dev broker that served earlier runs spends most of a
# core on that (perf, 2026-12-01: 36% of both cores in rd_kafka_mock_msgset_find). Every
# run starts on a fresh one; a real broker (KAFKA_BROKERS) indexes offsets and is left as is.
fresh_broker() {
    local stack_env
    stack_env=$(scripts/dev-stack.sh kafka-restart --if-dev)
    eval "$stack_env"
}
fresh_broker
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
say "building (release)"
cargo build --release --quiet --bin server_kafka --bin seckill_gateway --bin seckill_admin --bin client_kafka
cargo bench --quiet --bench gateway_open_loop --no-run 2>/dev/null
BIN=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
RUN=$(date +%s)
LOGS=.dev/bench-gateway/$RUN
mkdir -p "$LOGS"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GATEWAY_JWT_SECRET=$(openssl rand -hex 32)
export GATEWAY_JWT_SECRET
SALE=$((RUN * 10 + 1))
"$BIN/seckill_admin" activity create --id "$SALE" --stock 100000000 --per-user-limit 1000000 >/dev/null 2>"$LOGS/admin.log"
"$BIN/seckill_admin" token --user 1 --count "$USERS" --ttl-secs 3600 >"$LOGS/tokens" 2>>"$LOGS/admin.log"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
# wait_ready URL PID LOG: until URL answers, while PID lives, at most 60 s.
wait_ready() {
    local deadline=$((SECONDS + 60))
    until python3 -c "import urllib.request; urllib.request.urlopen('$1', timeout=1)" 2>/dev/null; do
        kill -0 "$2" 2>/dev/null || die "it exited before it was ready: see $3"
        [ "$SECONDS" -lt "$deadline" ] || die "not ready after 60 s ($1): see $3"
        sleep 0.2
    done
}
peak_rss_mib() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }
# metric_sum PORT NAME WHO: the sum of NAME's series on the metrics served at PORT (dies,
# naming WHO, when they cannot be read).
metric_sum() {
    local metrics
    metrics=$(curl -sf "http://127.0.0.1:$1/metrics") || die "no metrics from $3 at 127.0.0.1:$1"
    awk -v name="$2" 'index($0, name) == 1 {sum += $NF} END {printf "%d\n", sum}' <<<"$metrics"
}
# server_kafka (a new group for each phase, from the requests written after it is ready) and
# the gateway, on the broker KAFKA_BROKERS names: sets SERVER, METRICS, GATEWAY, PORT,
# GATEWAY_METRICS.
start_services() {
    METRICS=$(free_port)
    SECKILL_SERVER_KAFKA_GROUP_ID=bench-gateway-$RUN-$1 SECKILL_SERVER_KAFKA_OFFSET_RESET=latest \
        "$BIN/server_kafka" --metrics-addr "127.0.0.1:$METRICS" --status-interval-secs 60 \
        >"$LOGS/server-$1.out" 2>"$LOGS/server-$1.log" &
    SERVER=$!
    PIDS+=("$SERVER")
    wait_ready "http://127.0.0.1:$METRICS/ready" "$SERVER" "$LOGS/server-$1.log"
    PORT=$(free_port)
    GATEWAY_METRICS=$(free_port)
    SECKILL_GATEWAY_USER_RATE_PER_SEC=1000000 SECKILL_GATEWAY_USER_BURST=1000000 \
    SECKILL_GATEWAY_IP_RATE_PER_SEC=10000000 SECKILL_GATEWAY_IP_BURST=10000000 \
        "$BIN/seckill_gateway" --listen "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$GATEWAY_METRICS" \
        >"$LOGS/gateway-$1.out" 2>"$LOGS/gateway-$1.log" &
    GATEWAY=$!
    PIDS+=("$GATEWAY")
    wait_ready "http://127.0.0.1:$PORT/ready" "$GATEWAY" "$LOGS/gateway-$1.log"
}
# Stops both (each must still run: one that died is an error of the phase that ended).
stop_services() {
    kill "$SERVER" 2>/dev/null || die "server_kafka died during the run: see $LOGS/server-*.log"
    kill "$GATEWAY" 2>/dev/null || die "the gateway died during the run: see $LOGS/gateway-*.log"
    wait "$SERVER" "$GATEWAY" 2>/dev/null || true
    PIDS=()
}
start_services a
echo "limits for the run: per user 1,000,000/s, per address 10,000,000/s (all requests come from 127.0.0.1); $USERS users, each sale purchase by the next user"

# CPU time (user + system, all threads) a process has used, in clock ticks (getconf
# CLK_TCK a second): /proc/PID/stat fields 14, 15.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
say "(a) closed loop: wrk -t2 -c$CONNECTIONS -d${SECONDS_RUN}s, wait_ms=0"
# Purchases the gateway produced to Kafka (each acknowledged before its answer): the count of
# new purchases, apart from answers that needed no Kafka (a retried key's stored outcome).
produced() { metric_sum "$GATEWAY_METRICS" gateway_purchases_total "the gateway"; }
PRODUCED=$(produced)
GATEWAY_TICKS=$(cpu_ticks "$GATEWAY")
RUN_KEY=$RUN TOKENS="$LOGS/tokens" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_RUN}s" --latency -s scripts/bench-gateway.wrk.lua \
    "http://127.0.0.1:$PORT/activities/$SALE/purchase?wait_ms=0" | tee "$LOGS/wrk.out"
GATEWAY_TICKS=$(( $(cpu_ticks "$GATEWAY") - GATEWAY_TICKS ))
SENT=$(( $(produced) - PRODUCED ))
[ "$SENT" -gt 0 ] || die "the gateway produced no purchase in (a): see $LOGS/gateway-a.log and $LOGS/wrk.out"
ACCEPTED=$(python3 - "$LOGS/wrk.out" "$SENT" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
seconds, unit = re.search(r"\d+ requests in ([\d.]+)(m?s)", text).groups()
seconds = float(seconds) / (1000 if unit == "ms" else 1)
print(round(int(sys.argv[2]) / seconds))
PY
)
ANSWERED=$(grep -o '[0-9]* requests in' "$LOGS/wrk.out" | cut -d' ' -f1)
echo "answered $ANSWERED, of which $SENT new purchases produced to Kafka (the rest: non-2xx or an answer without Kafka)"
# CPU per purchase is steadier than the rate on a shared machine: compare builds with it.
echo "gateway CPU per accepted purchase: $(python3 -c "import sys; t, n = map(float, sys.argv[1:]); print(round(t / $(getconf CLK_TCK) * 1e6 / max(n, 1), 1))" "$GATEWAY_TICKS" "$SENT") us"
echo "accepted: $ACCEPTED purchases/s"

# (b) measures click to outcome, not the queue left by (a): wait until server_kafka has
# decided every purchase (a) produced.
decided() { metric_sum "$METRICS" seckill_requests_total server_kafka; }
say "waiting for server_kafka to decide the $SENT purchases of (a)"
WAITED=0 STILL=0 LAST=-1
while :; do
    NOW=$(decided)
    { [ "$NOW" -lt "$SENT" ] && [ "$STILL" -lt 5 ]; } || break
    if [ "$NOW" = "$LAST" ]; then STILL=$((STILL + 1)); else STILL=0; LAST=$NOW; fi
    sleep 1; WAITED=$((WAITED + 1))
done
if [ "$NOW" -ge "$SENT" ]; then
    echo "decided ${WAITED}s after (a) ended"
else
    echo "server_kafka decided $NOW of $SENT and stopped there"
fi
# (a) left the dev broker holding hundreds of thousands of small message sets, which it walks
# on every fetch (above): on it, (b)'s p99 grew from 77 ms (fresh) to 290-350 ms in three
# back-to-back runs (2026-12-01), a cost Apache Kafka, which indexes offsets, does not have.
# So (b) starts on a fresh dev broker too, with a new server_kafka and gateway.
echo "(a)'s gateway peak RSS $(peak_rss_mib "$GATEWAY") MiB"
stop_services
fresh_broker
start_services b
HALF=$((ACCEPTED / 2))
say "(b) open loop at $HALF purchases/s (half of (a)) for ${SECONDS_RUN}s after a ${WARMUP}s warm-up, each waiting for its outcome"
cargo bench --quiet --bench gateway_open_loop -- "http://127.0.0.1:$PORT/activities/$SALE/purchase?wait_ms=5000" \
    "$LOGS/tokens" "$HALF" "$SECONDS_RUN" "$WARMUP" 2>>"$LOGS/open-loop.log" | tee "$LOGS/open-loop.out"
say "(c) the same sale through client_kafka ($((ACCEPTED * SECONDS_RUN)) requests straight into Kafka)"
SECKILL_SECKILL_ACTIVITY_ID=$SALE "$BIN/client_kafka" --users $((ACCEPTED * SECONDS_RUN)) --seed "$RUN" \
    2>>"$LOGS/client.log" | tee "$LOGS/client.out"
echo "the gateway's peak RSS in (b) and (c): $(peak_rss_mib "$GATEWAY") MiB"
echo "logs: $LOGS"
