#!/usr/bin/env bash
# The flash-sale demo on the local stack:
#   1. install what the machine lacks (scripts/dev-stack.sh deps), then build the programs
#      (the dev profile the tests use too, see Cargo.toml) while the dev stack (Redis,
#      PostgreSQL, dev broker) starts
#   2. run server_kafka and log_worker in the background
#   3. client_kafka sends DEMO_USERS users x DEMO_REQUESTS_PER_USER requests against
#      DEMO_STOCK items (several requests per user, so repeat buyers happen), and waits for
#      every request's answer on the results topic (--await-results)
#   4. wait until every request is processed and every record is in PostgreSQL
#   5. SIGTERM both programs (they drain and commit), verify the invariants, print a report
# Each run uses a new activity id and consumer group, so runs do not disturb each other.
# Logs: .dev/demo/<run>/*.log
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
USERS=${DEMO_USERS:-20000}
PER_USER=${DEMO_REQUESTS_PER_USER:-3}
STOCK=${DEMO_STOCK:-1000}
TOTAL=$((USERS * PER_USER))

say() { printf '\n== %s\n' "$*"; }

say "installing what is missing, then building the programs while the local stack starts"
mkdir -p .dev
# The crates download while apt-get installs the build's C side (cmake, OpenSSL and libcurl
# headers) and the servers, in one apt-get call (scripts/dev-stack.sh deps).
cargo fetch --quiet > .dev/fetch.log 2>&1 &
FETCH_PID=$!
trap 'kill "$FETCH_PID" 2>/dev/null || true' EXIT
scripts/dev-stack.sh deps
wait "$FETCH_PID" || { cat .dev/fetch.log >&2; echo "demo: cargo fetch failed" >&2; exit 1; }
# In the background: the first build (librdkafka above all) overlaps the stack's start.
# dev-stack.sh's own build of dev_broker waits for this one (cargo's lock) and finds it done.
cargo build --quiet --bins > .dev/build.log 2>&1 &
BUILD_PID=$!
# A stack that fails to start ends the demo: the build must not run on behind it.
trap 'kill "$BUILD_PID" 2>/dev/null || true' EXIT
scripts/dev-stack.sh up
eval "$(scripts/dev-stack.sh env)"
wait "$BUILD_PID" || { cat .dev/build.log >&2; echo "demo: cargo build failed" >&2; exit 1; }
BIN=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug

RUN=$(date +%s)
export SECKILL_SECKILL_ACTIVITY_ID=$RUN
export SECKILL_SERVER_KAFKA_GROUP_ID=seckill-demo-$RUN
# A new group starts at the topic's end: earlier runs' requests are history, not this run's
# work (the server says it is ready only once its start positions are fixed).
export SECKILL_SERVER_KAFKA_OFFSET_RESET=latest
METRICS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOGS=.dev/demo/$RUN
mkdir -p "$LOGS"
REDIS_PORT=$(cat .dev/redis.port)
key() { echo "seckill:{$RUN}:$1"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# Records waiting in the queue or taken by a log_worker and not yet stored (each worker has
# its own processing list; see src/redis_state.rs).
pending_records() {
    local n w
    n=$(( $(rcli LLEN "$(key logs)") + $(rcli LLEN "$(key logs:processing)") ))
    for w in $(rcli SMEMBERS "$(key logs:workers)"); do
        n=$((n + $(rcli LLEN "$(key "logs:processing:$w")")))
    done
    echo "$n"
}

SERVER_PID= WORKER_PID=
cleanup() {
    for pid in $SERVER_PID $WORKER_PID; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "activity $RUN: stock $STOCK, $USERS users x $PER_USER requests = $TOTAL requests"
"$BIN/server_kafka" --initial-stock "$STOCK" --metrics-addr "127.0.0.1:$METRICS_PORT" \
    >"$LOGS/server.out" 2>"$LOGS/server.log" &
SERVER_PID=$!
"$BIN/log_worker" >"$LOGS/log_worker.out" 2>"$LOGS/log_worker.log" &
WORKER_PID=$!
# Send only once the server is ready (state reset, every consumer has its partitions), so the
# latency figures measure processing, not the group's first join.
ready() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/ready', timeout=1)" 2>/dev/null; }
deadline=$((SECONDS + 60))
until ready; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOGS/server.log" >&2; echo "demo: server_kafka exited; logs in $LOGS" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "demo: server_kafka not ready in 60 s; logs in $LOGS" >&2; exit 1; }
    sleep 0.1
done

started=$(date +%s.%N)
"$BIN/client_kafka" --users "$USERS" --requests-per-user "$PER_USER" --await-results \
    2>"$LOGS/client.log" | tee "$LOGS/client.out"

say "waiting for the pipeline to drain"
deadline=$((SECONDS + 90))
while :; do
    seen=$(rcli HLEN "$(key decided)")
    queued=$(pending_records)
    [ "$seen" -ge "$TOTAL" ] && [ "$queued" = 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "demo: the pipeline did not drain in 90 s ($seen/$TOTAL requests seen, $queued records queued); logs in $LOGS" >&2
        exit 1
    fi
    sleep 0.2
done
drained=$(date +%s.%N)

say "stopping server_kafka and log_worker (SIGTERM: drain, commit, exit)"
kill -TERM "$SERVER_PID" "$WORKER_PID"
server_status=0 worker_status=0
wait "$SERVER_PID" || server_status=$?
wait "$WORKER_PID" || worker_status=$?
SERVER_PID= WORKER_PID=
cat "$LOGS/server.out" "$LOGS/log_worker.out"
[ "$server_status" = 0 ] && [ "$worker_status" = 0 ] \
    || { echo "demo: server_kafka exited $server_status, log_worker $worker_status; logs in $LOGS" >&2; exit 1; }

say "verifying the invariants"
verify_status=0
"$BIN/log_worker" --verify --expect-buyers "$USERS" 2>"$LOGS/verify.log" || verify_status=$?

say "report"
python3 - "$started" "$drained" "$TOTAL" <<'EOF'
import sys
started, drained, total = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"{total} requests from send to the last row in PostgreSQL in {drained - started:.2f} s "
      f"({total / (drained - started):.0f} requests/s end to end)")
EOF
grep -h "results:\|processed\|rows/s" "$LOGS/client.out" "$LOGS/server.out" "$LOGS/log_worker.out" | sed "s/^ */  /"
echo "  logs: $LOGS"
exit "$verify_status"
