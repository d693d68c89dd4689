#!/usr/bin/env bash
# The flash-sale demo on the local stack: twenty sales at once on one server fleet, and a
# twenty-first whose buyers must pay within 3 s.
#   1. install what the machine lacks (scripts/dev-stack.sh deps), then build the programs
#      (the dev profile the tests use too, see Cargo.toml) while the dev stack (Redis, a Redis
#      Cluster, PostgreSQL, dev broker) starts
#   2. seckill_admin creates 20 sales: different stock, one that starts in an hour, one with
#      a limit of 2 purchases per user
#   3. one server_kafka serves every activity, one log_worker this run's 20, in the
#      background
#   4. client_kafka sends DEMO_USERS users x DEMO_REQUESTS_PER_USER requests spread over 19
#      sales (each user asks several), and a second run has users ask the limited sale three
#      times each; both wait for every answer on the results topic (--await-results)
#   5. sale 21 has a 3 s payment window: a first wave of buyers takes its whole stock and pays
#      for about two thirds of it; the unpaid reservations expire, their units go back on
#      sale, and a second wave of buyers takes them and pays (client_kafka --pay-ratio)
#   6. wait until every record is in PostgreSQL, SIGTERM both programs (they drain and
#      commit), verify the invariants of every sale, print a report
# DEMO_REDIS=cluster (make demo-cluster) runs it on the local Redis Cluster instead of the
# single node. Each run uses new activity ids and a new consumer group, so runs do not
# disturb each other. Logs: .dev/demo/<run>/*.log
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
USERS=${DEMO_USERS:-20000}
PER_USER=${DEMO_REQUESTS_PER_USER:-3}
LIMITED_USERS=${DEMO_LIMITED_USERS:-2000}
REDIS_MODE=${DEMO_REDIS:-single}

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

case "$REDIS_MODE" in
    single) ;;
    cluster)
        # Every program on the cluster: REDIS_URL (the single node) is not used then.
        export SECKILL_REDIS_CLUSTER_URLS=$DEV_REDIS_CLUSTER_URLS ;;
    *) echo "demo: DEMO_REDIS is single or cluster, not $REDIS_MODE" >&2; exit 2 ;;
esac

RUN=$(date +%s)
export SECKILL_SERVER_KAFKA_GROUP_ID=seckill-demo-$RUN
# A new group starts at the topic's end: earlier runs' requests are history, not this run's
# work (the server says it is ready only once its start positions are fixed).
export SECKILL_SERVER_KAFKA_OFFSET_RESET=latest
METRICS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOGS=.dev/demo/$RUN
mkdir -p "$LOGS"

SERVER_PID= WORKER_PID= GATEWAY_PID=
cleanup() {
    for pid in $SERVER_PID $WORKER_PID $GATEWAY_PID; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "21 sales on the Redis $REDIS_MODE: activities $((RUN * 100 + 1))..$((RUN * 100 + 21))"
IDS=()
STARTS_LATER=$(python3 -c 'import datetime; print((datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat(timespec="seconds"))')
for k in $(seq 1 20); do
    id=$((RUN * 100 + k))
    IDS+=("$id")
    flags=(--id "$id" --stock $((k * 50)))
    case $k in
        5) flags+=(--starts-at "$STARTS_LATER" --name "demo sale $k (starts in an hour)") ;;
        7) flags+=(--per-user-limit 2 --name "demo sale $k (2 per user)") ;;
        *) flags+=(--name "demo sale $k") ;;
    esac
    "$BIN/seckill_admin" activity create "${flags[@]}" > "$LOGS/create-$id.out" 2>"$LOGS/admin.log" \
        || { cat "$LOGS/admin.log" >&2; echo "demo: seckill_admin could not create sale $id" >&2; exit 1; }
done
PAY_SALE=$((RUN * 100 + 21))
PAY_STOCK=${DEMO_PAY_STOCK:-300}
IDS+=("$PAY_SALE")
"$BIN/seckill_admin" activity create --id "$PAY_SALE" --stock "$PAY_STOCK" --payment-window-ms 3000 \
    --name "demo sale 21 (pay within 3 s)" > "$LOGS/create-$PAY_SALE.out" 2>>"$LOGS/admin.log" \
    || { cat "$LOGS/admin.log" >&2; echo "demo: seckill_admin could not create sale $PAY_SALE" >&2; exit 1; }
LIMITED=${IDS[6]}
SPREAD=$(printf '%s\n' "${IDS[@]}" | grep -vx "$LIMITED" | grep -vx "$PAY_SALE" | paste -sd, -)
IDS_LIST=$(printf '%s\n' "${IDS[@]}" | paste -sd, -)
"$BIN/seckill_admin" activity list 2>>"$LOGS/admin.log" | grep -E "^id|^$RUN" | sed 's/^/  /'

"$BIN/server_kafka" --metrics-addr "127.0.0.1:$METRICS_PORT" \
    >"$LOGS/server.out" 2>"$LOGS/server.log" &
SERVER_PID=$!
# log_worker moves this run's sales only: the dev Redis also holds the sales of earlier
# runs, tests and benchmarks (whose records are theirs to move), and a demo that drained
# them would measure their backlog. Without --activity-ids it serves every activity.
"$BIN/log_worker" --activity-ids "$IDS_LIST" >"$LOGS/log_worker.out" 2>"$LOGS/log_worker.log" &
WORKER_PID=$!
# Send only once the server is ready (every consumer has its partitions), so the latency
# figures measure processing, not the group's first join.
ready() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/ready', timeout=1)" 2>/dev/null; }
deadline=$((SECONDS + 60))
until ready; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOGS/server.log" >&2; echo "demo: server_kafka exited; logs in $LOGS" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "demo: server_kafka not ready in 60 s; logs in $LOGS" >&2; exit 1; }
    sleep 0.1
done

# The front door and its live page, beside the demo's clients.
export GATEWAY_JWT_SECRET=${GATEWAY_JWT_SECRET:-$(openssl rand -hex 32)}
GATEWAY_PORT=${DEMO_GATEWAY_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
"$BIN/seckill_gateway" --listen "127.0.0.1:$GATEWAY_PORT" >"$LOGS/gateway.out" 2>"$LOGS/gateway.log" &
GATEWAY_PID=$!
deadline=$((SECONDS + 60))
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$GATEWAY_PORT/ready', timeout=1)" 2>/dev/null; do
    kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$LOGS/gateway.log" >&2; echo "demo: seckill_gateway exited; logs in $LOGS" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "demo: seckill_gateway not ready in 60 s; logs in $LOGS" >&2; exit 1; }
    sleep 0.1
done
PAGE="http://127.0.0.1:$GATEWAY_PORT/?ids=$IDS_LIST"
say "the live page: $PAGE"

say "$USERS users x $PER_USER requests over 19 sales, and $LIMITED_USERS users x 3 on sale $LIMITED (2 per user)"
started=$(date +%s.%N)
"$BIN/client_kafka" --activity-ids "$SPREAD" --users "$USERS" --requests-per-user "$PER_USER" \
    --await-results 2>"$LOGS/client.log" | tee "$LOGS/client.out"
"$BIN/client_kafka" --activity-id "$LIMITED" --users "$LIMITED_USERS" --requests-per-user 3 \
    --seed 7 --await-results 2>"$LOGS/client-limited.log" | tee "$LOGS/client-limited.out"

# Polls `log_worker --verify` over the sales $1 until every invariant holds.
wait_verified() {
    local deadline=$((SECONDS + 90))
    until "$BIN/log_worker" --verify --activity-ids "$1" >"$LOGS/verify.out" 2>"$LOGS/verify.log"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            cat "$LOGS/verify.out"
            echo "demo: the records did not reach PostgreSQL in 90 s; logs in $LOGS" >&2
            exit 1
        fi
        sleep 0.3
    done
}
say "waiting for every record to reach PostgreSQL"
wait_verified "$(printf '%s\n' "${IDS[@]}" | grep -vx "$PAY_SALE" | paste -sd, -)"
drained=$(date +%s.%N)

say "sale $PAY_SALE: $((PAY_STOCK * 3)) buyers, a third of the winners never pay; then a second wave"
# Each wave waits until every reservation it made is paid or expired (order events).
"$BIN/client_kafka" --activity-id "$PAY_SALE" --users $((PAY_STOCK * 3)) --seed 21 --await-results \
    --pay-ratio 0.67 --pay-delay-ms 200..1500 2>"$LOGS/client-pay-1.log" | tee "$LOGS/client-pay-1.out"
"$BIN/client_kafka" --activity-id "$PAY_SALE" --users $((PAY_STOCK * 3)) --seed 22 --await-results \
    --pay-ratio 1 --pay-delay-ms 200..800 2>"$LOGS/client-pay-2.log" | tee "$LOGS/client-pay-2.out"
wait_verified "$PAY_SALE"

say "stopping server_kafka and log_worker (SIGTERM: drain, commit, exit)"
kill -TERM "$SERVER_PID" "$WORKER_PID"
server_status=0 worker_status=0
wait "$SERVER_PID" || server_status=$?
wait "$WORKER_PID" || worker_status=$?
SERVER_PID= WORKER_PID=
cat "$LOGS/server.out" "$LOGS/log_worker.out"
[ "$server_status" = 0 ] && [ "$worker_status" = 0 ] \
    || { echo "demo: server_kafka exited $server_status, log_worker $worker_status; logs in $LOGS" >&2; exit 1; }

say "verifying the invariants of every sale"
verify_status=0
"$BIN/log_worker" --verify --activity-ids "$IDS_LIST" 2>>"$LOGS/verify.log" || verify_status=$?
echo
for id in "$LIMITED" "$PAY_SALE"; do
    "$BIN/seckill_admin" activity show "$id" 2>>"$LOGS/admin.log" | sed 's/^/  /'
done

say "report"
TOTAL=$((USERS * PER_USER + LIMITED_USERS * 3))
python3 - "$started" "$drained" "$TOTAL" <<'EOF'
import sys
started, drained, total = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"{total} requests over 20 sales, from the first send to the last row in PostgreSQL in "
      f"{drained - started:.2f} s ({total / (drained - started):.0f} requests/s end to end)")
EOF
grep -h "results:\|orders:\|processed\|rows/s" "$LOGS/client.out" "$LOGS/client-limited.out" \
    "$LOGS/client-pay-1.out" "$LOGS/client-pay-2.out" "$LOGS/server.out" "$LOGS/log_worker.out" | sed "s/^ */  /"
echo "  logs: $LOGS"
echo "  the live page was at $PAGE"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
    # The page stays up, the sales served again, until Ctrl-C.
    "$BIN/server_kafka" >>"$LOGS/server.out" 2>>"$LOGS/server.log" &
    SERVER_PID=$!
    "$BIN/log_worker" --activity-ids "$IDS_LIST" >>"$LOGS/log_worker.out" 2>>"$LOGS/log_worker.log" &
    WORKER_PID=$!
    say "DEMO_KEEP=1: the page stays at $PAGE until Ctrl-C (a token: GATEWAY_JWT_SECRET=$GATEWAY_JWT_SECRET $BIN/seckill_admin token --user 1)"
    wait "$GATEWAY_PID" || true
fi
exit "$verify_status"
