#!/usr/bin/env bash
# make bench-server: server_kafka against the speed of its own Redis, in one run on the local
# stack (docs/BENCHMARKS.md has the figures and what they mean):
#   (a) the single-request purchase script (src/redis_state/purchase.lua) driven by
#       redis-benchmark on the same Redis: sold-out path, unique request ids, -c 50 -P 16;
#   (b) server_kafka's busy rate on a backlog of BENCH_REQUESTS requests (95% sold out), its
#       group joined before the backlog is written (the server is stopped with SIGSTOP while
#       client_kafka writes it, then continued), with its peak RSS; then (b) / (a); once with
#       every result published to the results topic (the default) and once without;
#   (c) cost_ms p50/p95/p99 for a warmed group fed at half of (b) by client_kafka --rate, and
#       what the buyers saw (client_kafka --await-results: send to result read);
#   (d) every request a success (stock = requests): log_worker's insert rate next to the
#       server's, and the longest the Redis queue got;
#   (e) one server fleet serving every activity (seckill_admin creates them), a backlog of
#       BENCH_REQUESTS requests spread over 1 and over BENCH_ACTIVITIES activities, results
#       off: busy rates and peak RSS, and their ratios; then the same 100 activities on the
#       local 3-master Redis Cluster, next to the single node;
#   (f) a small sale's answer times (send to result read, p50/p99) while a hot sale takes 95%
#       of the traffic at half of (b)'s rate, next to the small sale alone at its own rate;
#   (g) what durability costs: on a private master with one replica, (b) with
#       redis.wait_replicas auto (WAIT for it behind every batch) and 0, twice each;
#   (h) orders: as (b), a backlog of BENCH_ORDER_REQUESTS requests on a sale whose 50,000
#       buyers (just before) pay 70% of their reservations during the backlog and leave the
#       rest to expire during it (5 s window), next to a sale without a window, A B x 3,
#       results on; then 100,000 reservations left to expire while purchases go on: the
#       longest any Redis command took meanwhile (Redis's latency monitor).
# Each phase uses new activities and a new consumer group on the shared requests topic,
# starting at its end (offset_reset latest, after /ready), so earlier runs' history costs
# nothing; the run's sales are removed from Redis and PostgreSQL at the end (BENCH_KEEP=1
# keeps them).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REQUESTS=${BENCH_REQUESTS:-200000}
LATENCY_SECONDS=${BENCH_LATENCY_SECONDS:-5}
ACTIVITIES=${BENCH_ACTIVITIES:-100}
# BENCH_PHASES="b e" runs only those phases (default: every one).
PHASES=${BENCH_PHASES:-a b c d e f g h}
ORDER_REQUESTS=${BENCH_ORDER_REQUESTS:-1000000}
phase() { [[ " $PHASES " == *" $1 "* ]]; }

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench-server: %s\n' "$*" >&2; exit 1; }

scripts/dev-stack.sh up >/dev/null
eval "$(scripts/dev-stack.sh env)"
say "building the programs (release)"
cargo build --release --quiet --bin client_kafka --bin server_kafka --bin log_worker --bin seckill_admin
BIN=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
REDIS_PORT=$(cat .dev/redis.port)
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
RUN=$(date +%s)
LOGS=.dev/bench-server/$RUN
mkdir -p "$LOGS"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# 0 when GET http://127.0.0.1:$1$2 answers 200.
http_ok() { python3 -c "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:$1$2', timeout=2)" 2>/dev/null; }
# wait_answered PORT COUNT SECONDS: returns once the server on PORT has answered COUNT
# requests (every outcome, from its metrics page). One process polls for the whole wait:
# a new python3 (or bash and curl) every poll took a fifth of the two cores during a busy
# phase, out of Redis's share (perf, docs/BENCHMARKS.md).
wait_answered() {
    python3 - "$@" <<'PY' || die "timed out waiting for $2 answers; logs in $LOGS"
import sys, time, urllib.request
port, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    if sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
           if line.startswith("seckill_requests_total{")) >= count:
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
PY
}
wait_until() { # wait_until SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what; logs in $LOGS"
        sleep 0.2
    done
}

SERVER_PID= WORKER_PID=
# The run's sales are measurement artefacts: their Redis state (millions of decided
# requests, queued records no log_worker moves) and their PostgreSQL rows are removed at
# the end, or every later run, demo and log_worker on the dev stack would carry them.
# BENCH_KEEP=1 keeps them to inspect.
forget_run() {
    [ "${BENCH_KEEP:-0}" = 1 ] && { echo "kept this run's sales (activity ids $RUN*)"; return; }
    local port
    for port in "$REDIS_PORT" $(printf '%s\n' "${DEV_REDIS_CLUSTER_URLS//\\/}" | tr ',' '\n' | sed 's#.*:##'); do
        redis-cli -p "$port" --scan --pattern "seckill:{$RUN*" 2>/dev/null \
            | while read -r key; do printf 'UNLINK %s\n' "$key"; done \
            | redis-cli -p "$port" >/dev/null 2>&1 || true
        local registry
        for registry in seckill:activities seckill:activities:windowed; do
            redis-cli -p "$port" SMEMBERS "$registry" 2>/dev/null | grep "^$RUN" \
                | while read -r id; do printf 'SREM %s %s\n' "$registry" "$id"; done \
                | redis-cli -c -p "$port" >/dev/null 2>&1 || true
        done
    done
    if command -v psql >/dev/null; then
        psql -q "$DATABASE_URL" -c "DELETE FROM seckill_records WHERE activity_id::text LIKE '$RUN%'" \
            -c "DELETE FROM orders WHERE activity_id::text LIKE '$RUN%'" \
            -c "DELETE FROM activities WHERE id::text LIKE '$RUN%'" >/dev/null 2>&1 || true
    fi
}
cleanup() { for pid in $SERVER_PID $WORKER_PID; do kill -CONT "$pid" 2>/dev/null; kill "$pid" 2>/dev/null || true; done; forget_run; }
trap cleanup EXIT

# start_server NAME ACTIVITY STOCK [ARGS...]: a server on a new activity and group, at the
# topic's end, returns once /ready answers 200 (every consumer has its partitions).
start_server() {
    local name=$1 activity=$2 stock=$3; shift 3
    METRICS_PORT=$(free_port)
    SECKILL_SECKILL_ACTIVITY_ID=$activity SECKILL_SERVER_KAFKA_GROUP_ID=bench-$activity \
    SECKILL_SERVER_KAFKA_OFFSET_RESET=latest \
        "$BIN/server_kafka" --initial-stock "$stock" --metrics-addr "127.0.0.1:$METRICS_PORT" \
        --status-interval-secs 60 "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" &
    SERVER_PID=$!
    wait_until 60 "$name /ready" http_ok "$METRICS_PORT" /ready
}
stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || die "server_kafka exited $?; logs in $LOGS"
    SERVER_PID=
}
client() { # client ACTIVITY ARGS...: client_kafka on ACTIVITY, its summary on stdout
    local activity=$1; shift
    SECKILL_SECKILL_ACTIVITY_ID=$activity "$BIN/client_kafka" "$@" 2>>"$LOGS/client.log"
}

if phase a; then
say "(a) the single-request script via redis-benchmark -c 50 -P 16 (sold-out path, unique request ids)"
A_ACTIVITY=$((RUN * 10 + 1))
key() { echo "seckill:{$A_ACTIVITY}:$1"; }
rcli SET "$(key stock)" 0 >/dev/null
rcli SET "$(key success)" 0 >/dev/null
SHA=$(rcli SCRIPT LOAD "$(cat src/redis_state/scripts/purchase.lua)")
RECORD='{"request_id":"bench-__rand_int__","user_id":1,"activity_id":'$A_ACTIVITY',"request_initiation_time":1700000000000,"processed_time":1700000000100,"cost_ms":100}'
redis_rate() { # redis_rate PIPELINE
    # -q ends with "<command>: <rate> requests per second, ..." (the command holds JSON,
    # which --csv does not quote).
    redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 50 -P "$1" -n 1000000 -r 1000000000000 -q \
        EVALSHA "$SHA" 8 "$(key stock)" "$(key over)" "$(key holdings)" "$(key decided)" \
        "$(key success)" "$(key logs)" "$(key outcomes)" "$(key meta)" \
        "bench-__rand_int__" __rand_int__ "$RECORD" \
        | tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1 \
        | python3 -c 'import sys; print(round(float(sys.stdin.read())))'
}
REDIS_P1=$(redis_rate 1)
REDIS_P16=$(redis_rate 16)
[ "$(rcli GET "$(key success)")" = 0 ] || die "redis-benchmark took stock"
rcli DEL "$(key decided)" "$(key outcomes)" "$(key holdings)" >/dev/null
echo "redis-benchmark: $REDIS_P1 calls/s (-P 1), $REDIS_P16 calls/s (-P 16)"
fi

# backlog NAME ACTIVITY [SERVER ARGS...]: (b) once; sets BUSY_RATE and RSS_KB.
backlog() {
    local name=$1 activity=$2; shift 2
    start_server "$name" "$activity" $((REQUESTS / 20)) "$@"
    kill -STOP "$SERVER_PID"
    client "$activity" --users "$REQUESTS" --seed "$RUN"
    kill -CONT "$SERVER_PID"
    wait_answered "$METRICS_PORT" "$REQUESTS" 300
    RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
    stop_server
    cat "$LOGS/$name.out"
    BUSY_RATE=$(sed -n 's/.*busy (\([0-9]*\)\/s).*/\1/p' "$LOGS/$name.out")
}

if phase b; then
say "(b) server_kafka busy rate on a backlog of $REQUESTS requests, group joined first, results off"
backlog server-b-off $((RUN * 10 + 5)) --no-results
BUSY_OFF=$BUSY_RATE
say "(b) the same with every result published (the default)"
backlog server-b $((RUN * 10 + 2))
python3 - "$BUSY_RATE" "${REDIS_P16:-0}" "$RSS_KB" "$BUSY_OFF" <<'EOF'
import sys
busy, redis, rss, off = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if redis:
    print(f"server_kafka busy rate {busy}/s = {busy / redis:.2f}x redis-benchmark -P 16 ({redis}/s)")
print(f"peak RSS {rss / 1024:.0f} MiB")
print(f"results on: {busy}/s, off: {off}/s: {busy / off:.2f}x")
EOF
fi

# Half of (b)'s rate, for (c) and (f); without (b), BENCH_HALF_RATE.
HALF=$(( ${BUSY_RATE:-$(( ${BENCH_HALF_RATE:-100000} * 2 ))} / 2 ))
if phase c; then
LATENCY_REQUESTS=$((HALF * LATENCY_SECONDS))
say "(c) latency: a warmed group fed $LATENCY_REQUESTS requests at $HALF/s (half of (b))"
C_ACTIVITY=$((RUN * 10 + 3))
start_server server-c "$C_ACTIVITY" $((LATENCY_REQUESTS / 20))
client "$C_ACTIVITY" --users "$LATENCY_REQUESTS" --rate "$HALF" --seed "$RUN" --await-results
wait_answered "$METRICS_PORT" "$LATENCY_REQUESTS" 300
stop_server
grep -h "processed\|latency" "$LOGS/server-c.out"
fi

if phase d; then
say "(d) every request a success: log_worker next to the server ($REQUESTS requests, stock $REQUESTS)"
D_ACTIVITY=$((RUN * 10 + 4))
start_server server-d "$D_ACTIVITY" "$REQUESTS"
SECKILL_SECKILL_ACTIVITY_ID=$D_ACTIVITY "$BIN/log_worker" >"$LOGS/log_worker.out" 2>"$LOGS/log_worker.log" &
WORKER_PID=$!
client "$D_ACTIVITY" --users "$REQUESTS" --seed "$RUN" &
CLIENT_PID=$!
DKEY() { echo "seckill:{$D_ACTIVITY}:$1"; }
longest=0
while :; do
    queued=$(rcli LLEN "$(DKEY logs)")
    [ "$queued" -gt "$longest" ] && longest=$queued
    stored=$(( $(rcli GET "$(DKEY success)") - queued ))
    if ! kill -0 "$CLIENT_PID" 2>/dev/null && [ "$queued" = 0 ] \
        && [ "$(rcli GET "$(DKEY success)")" = "$REQUESTS" ]; then break; fi
    sleep 0.1
done
wait "$CLIENT_PID"
sleep 1 # the last batch leaves its processing list
stop_server
kill -TERM "$WORKER_PID"; wait "$WORKER_PID" || die "log_worker exited $?"; WORKER_PID=
grep -h "processed" "$LOGS/server-d.out"
cat "$LOGS/log_worker.out"
echo "longest Redis log queue: $longest records (stored $stored)"
SECKILL_SECKILL_ACTIVITY_ID=$D_ACTIVITY "$BIN/log_worker" --verify --expect-buyers "$REQUESTS" >"$LOGS/verify.out" 2>&1 \
    || { cat "$LOGS/verify.out"; die "invariants violated after (d)"; }
echo "log_worker --verify: all invariants hold"
fi

# create_activities FIRST COUNT STOCK: seckill_admin creates activities FIRST.. (each with STOCK).
create_activities() {
    local id
    for id in $(seq "$1" $(($1 + $2 - 1))); do
        "$BIN/seckill_admin" activity create --id "$id" --stock "$3" >/dev/null 2>>"$LOGS/admin.log" \
            || die "seckill_admin could not create $id; see $LOGS/admin.log"
    done
}
# start_fleet NAME [ARGS...]: a server for every activity on a new group, at the topic's end.
start_fleet() {
    local name=$1; shift
    METRICS_PORT=$(free_port)
    SECKILL_SERVER_KAFKA_GROUP_ID=bench-$name-$RUN SECKILL_SERVER_KAFKA_OFFSET_RESET=latest \
        "$BIN/server_kafka" --metrics-addr "127.0.0.1:$METRICS_PORT" \
        --status-interval-secs 60 "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" &
    SERVER_PID=$!
    wait_until 60 "$name /ready" http_ok "$METRICS_PORT" /ready
}
# spread NAME IDS [ARGS...]: a backlog of REQUESTS over IDS (comma-separated) for a fleet
# joined first, results off; sets BUSY_RATE and RSS_KB.
spread() {
    local name=$1 ids=$2; shift 2
    start_fleet "$name" --no-results "$@"
    kill -STOP "$SERVER_PID"
    "$BIN/client_kafka" --activity-ids "$ids" --users "$REQUESTS" --seed "$RUN" 2>>"$LOGS/client.log" >/dev/null
    kill -CONT "$SERVER_PID"
    wait_answered "$METRICS_PORT" "$REQUESTS" 300
    RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
    stop_server
    grep -h "processed" "$LOGS/$name.out"
    BUSY_RATE=$(sed -n 's/.*busy (\([0-9]*\)\/s).*/\1/p' "$LOGS/$name.out")
}

if phase e; then
say "(e) one fleet for every activity: $REQUESTS requests over 1 activity, then over $ACTIVITIES, results off"
ONE=$((RUN * 1000 + 100))
create_activities "$ONE" 1 $((REQUESTS / 20))
MANY=$((RUN * 1000 + 200))
create_activities "$MANY" "$ACTIVITIES" $((REQUESTS / ACTIVITIES / 20 + 1))
MANY_IDS=$(seq "$MANY" $((MANY + ACTIVITIES - 1)) | paste -sd, -)
spread fleet-one "$ONE"
ONE_RATE=$BUSY_RATE ONE_RSS=$RSS_KB
spread fleet-many "$MANY_IDS"
MANY_RATE=$BUSY_RATE MANY_RSS=$RSS_KB
python3 - "$ONE_RATE" "$ONE_RSS" "$MANY_RATE" "$MANY_RSS" "$ACTIVITIES" <<'EOF'
import sys
one, one_rss, many, many_rss, n = (int(v) for v in sys.argv[1:])
print(f"1 activity: {one}/s, peak RSS {one_rss / 1024:.0f} MiB; {n} activities: {many}/s, "
      f"peak RSS {many_rss / 1024:.0f} MiB; ratio {many / one:.2f}x rate, {many_rss / one_rss:.2f}x RSS")
EOF

say "(e) the same $ACTIVITIES activities on the local 3-master Redis Cluster"
CLUSTER_MANY=$((RUN * 1000 + 400))
SECKILL_REDIS_CLUSTER_URLS=$DEV_REDIS_CLUSTER_URLS create_activities "$CLUSTER_MANY" "$ACTIVITIES" $((REQUESTS / ACTIVITIES / 20 + 1))
SECKILL_REDIS_CLUSTER_URLS=$DEV_REDIS_CLUSTER_URLS spread fleet-cluster "$(seq "$CLUSTER_MANY" $((CLUSTER_MANY + ACTIVITIES - 1)) | paste -sd, -)"
echo "$ACTIVITIES activities: cluster $BUSY_RATE/s vs single node $MANY_RATE/s: $(python3 -c "print(f'{$BUSY_RATE / $MANY_RATE:.2f}x')")"
fi

if phase f; then
HOT_RATE=$((HALF * 95 / 100))
SMALL_RATE=$((HALF * 5 / 100))
SMALL_REQUESTS=$((SMALL_RATE * LATENCY_SECONDS))
say "(f) a small sale at $SMALL_RATE/s, alone, then beside a hot sale at $HOT_RATE/s (results on)"
HOT=$((RUN * 1000 + 600)) SMALL=$((RUN * 1000 + 601)) SMALL_ALONE=$((RUN * 1000 + 602))
create_activities "$HOT" 3 $((REQUESTS / 20))
start_fleet fleet-latency
"$BIN/client_kafka" --activity-id "$SMALL_ALONE" --users "$SMALL_REQUESTS" --rate "$SMALL_RATE" --seed "$RUN" \
    --await-results 2>>"$LOGS/client.log" | grep "results:" | sed 's/^/  alone:      /'
"$BIN/client_kafka" --activity-id "$HOT" --users $((HOT_RATE * (LATENCY_SECONDS + 2))) --rate "$HOT_RATE" \
    --seed "$RUN" 2>>"$LOGS/client.log" >/dev/null &
HOT_PID=$!
sleep 1
"$BIN/client_kafka" --activity-id "$SMALL" --users "$SMALL_REQUESTS" --rate "$SMALL_RATE" --seed "$RUN" \
    --await-results 2>>"$LOGS/client.log" | grep "results:" | sed 's/^/  beside hot: /'
wait "$HOT_PID"
stop_server
fi

if phase g; then
say "(g) durability: a private master and replica; (b) with wait_replicas auto, then 0, twice (A B A B)"
# A fresh pair, not the dev Redis: the dev Redis keeps every run's sales, and a replica's
# first sync of that history (a fork and a copy of it all) ran into the measurement.
G_DIR="$PWD/$LOGS/durability"
mkdir -p "$G_DIR/master" "$G_DIR/replica"
G_MASTER=$(free_port)
G_REPLICA=$(free_port)
redis-server --bind 127.0.0.1 --port "$G_MASTER" --save '' --appendonly no --dir "$G_DIR/master" \
    --daemonize yes --pidfile "$G_DIR/master/pid" --logfile "$G_DIR/master/log"
redis-server --bind 127.0.0.1 --port "$G_REPLICA" --replicaof 127.0.0.1 "$G_MASTER" \
    --save '' --appendonly no --dir "$G_DIR/replica" --daemonize yes \
    --pidfile "$G_DIR/replica/pid" --logfile "$G_DIR/replica/log"
stop_pair() { for role in replica master; do kill "$(cat "$G_DIR/$role/pid" 2>/dev/null)" 2>/dev/null || true; done; }
trap 'cleanup; stop_pair' EXIT
wait_until 60 "the replica in sync" sh -c "redis-cli -p $G_MASTER info replication 2>/dev/null | grep -q 'state=online'"
G_RATES=()
for round in 1 2; do
    REDIS_URL=redis://127.0.0.1:$G_MASTER backlog "server-g-wait-$round" $((RUN * 10 + 4 + round * 2)) --no-results
    WAIT_RATE=$BUSY_RATE
    REDIS_URL=redis://127.0.0.1:$G_MASTER SECKILL_REDIS_WAIT_REPLICAS=0 \
        backlog "server-g-nowait-$round" $((RUN * 10 + 5 + round * 2)) --no-results
    G_RATES+=("$WAIT_RATE" "$BUSY_RATE")
done
stop_pair
python3 - "${G_RATES[@]}" <<'EOF2'
import sys
w1, n1, w2, n2 = map(int, sys.argv[1:])
print(f"with a replica: WAIT behind every batch {w1}/s and {w2}/s, no wait {n1}/s and {n2}/s: "
      f"{w1 / n1:.2f}x and {w2 / n2:.2f}x")
EOF2
fi
if phase h; then
say "(h) orders: a backlog of $ORDER_REQUESTS requests on a sale with a 5 s payment window, its payments and expiries due during it, next to a sale without, A B A B"
# orders_run NAME WINDOW_MS: as (b), on one sale of 50,000 units that buyers took just
# before: they pay 70% of their reservations 2-3 s later (client_kafka --pay-ratio, in the
# background); the server is stopped while the payments and a backlog of ORDER_REQUESTS
# requests are written, then continued, so it applies the payments and expires the unpaid
# reservations (deadlines 5 s after the purchase) while it works through the backlog. No
# log_worker meanwhile (as in (b): the events wait in Redis); it starts after, and the
# buyers' client checks that every order was settled. Sets BUSY_RATE (backlog requests
# over the time from the continue to the last answer).
orders_run() {
    local name=$1 window=$2 id=$((RUN * 1000 + 700 + ${#H_RATES[@]})) buyers=50000
    "$BIN/seckill_admin" activity create --id "$id" --stock "$buyers" \
        --payment-window-ms "$window" >/dev/null 2>>"$LOGS/admin.log" || die "cannot create $id"
    # Only this sale: a fleet for every activity would also expire an earlier run's leftovers.
    start_fleet "$name" --activity-id "$id"
    "$BIN/client_kafka" --activity-id "$id" --users "$buyers" --seed "$RUN" --await-results \
        --pay-ratio 0.7 --pay-delay-ms 2000..3000 2>>"$LOGS/client.log" >"$LOGS/$name.client" &
    local buyers_pid=$!
    wait_answered "$METRICS_PORT" "$buyers" 120
    sleep 0.5 # the buyers read their answers
    kill -STOP "$SERVER_PID"
    "$BIN/client_kafka" --activity-id "$id" --users "$ORDER_REQUESTS" --seed $((RUN + 1)) \
        2>>"$LOGS/client.log" >/dev/null
    kill -CONT "$SERVER_PID"
    BUSY_RATE=$(python3 - "$METRICS_PORT" $((buyers + ORDER_REQUESTS)) "$ORDER_REQUESTS" <<'PY'
import sys, time, urllib.request
port, count, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.monotonic()
while time.monotonic() - started < 300:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    if sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
           if line.startswith("seckill_requests_total{")) >= count:
        print(round(backlog / (time.monotonic() - started)))
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
PY
) || die "timed out waiting for the backlog; logs in $LOGS"
    "$BIN/log_worker" --activity-ids "$id" >"$LOGS/$name-worker.out" 2>"$LOGS/$name-worker.log" &
    WORKER_PID=$!
    wait "$buyers_pid" || die "the buyers' client_kafka failed; logs in $LOGS"
    stop_server
    kill -TERM "$WORKER_PID"; wait "$WORKER_PID" || die "log_worker exited $?"; WORKER_PID=
    grep -h "orders:" "$LOGS/$name.client" | sed 's/^/  /' || true
    grep -h "orders " "$LOGS/$name.out" || true
    echo "  backlog of $ORDER_REQUESTS answered at $BUSY_RATE/s"
    H_RATES+=("$BUSY_RATE")
}
H_RATES=()
for round in 1 2 3; do
    orders_run "orders-plain-$round" 0
    orders_run "orders-window-$round" 5000
done
python3 - "${H_RATES[@]}" <<'EOF2'
import statistics, sys
rates = list(map(int, sys.argv[1:]))
plain, window = rates[0::2], rates[1::2]
ratios = [w / p for p, w in zip(plain, window)]
print(f"backlog rate without a window {plain}/s, with payments and expiries {window}/s: "
      f"ratios {', '.join(f'{r:.2f}x' for r in ratios)}, median {statistics.median(ratios):.2f}x")
EOF2

say "(h) 100,000 reservations expiring while purchases go on (expiry_slice 500)"
EXPIRING=$((RUN * 1000 + 790)) BESIDE=$((RUN * 1000 + 791))
"$BIN/seckill_admin" activity create --id "$EXPIRING" --stock 100000 --payment-window-ms 3000 >/dev/null 2>>"$LOGS/admin.log"
"$BIN/seckill_admin" activity create --id "$BESIDE" --stock 1000 >/dev/null 2>>"$LOGS/admin.log"
start_fleet orders-expiry
"$BIN/client_kafka" --activity-id "$EXPIRING" --users 100000 --seed "$RUN" 2>>"$LOGS/client.log" >/dev/null
wait_answered "$METRICS_PORT" 100000 120
# From here on, only the expiry and the purchases beside it run scripts.
rcli CONFIG SET latency-monitor-threshold 1 >/dev/null
rcli LATENCY RESET >/dev/null
"$BIN/client_kafka" --activity-id "$BESIDE" --users 200000 --rate 20000 --seed "$RUN" \
    --await-results 2>>"$LOGS/client.log" >"$LOGS/orders-beside.client" &
BESIDE_PID=$!
EKEY() { echo "seckill:{$EXPIRING}:$1"; }
wait_until 120 "100,000 reservations expired" sh -c "[ \"\$(redis-cli -p $REDIS_PORT HGET $(EKEY order_counts) expired)\" = 100000 ]"
wait "$BESIDE_PID" || die "client_kafka beside the expiry failed"
LONGEST=$(rcli LATENCY LATEST | python3 -c 'import sys; v = sys.stdin.read().split(); print(max([int(x) for x in v[3::4]] or [0]))')
rcli CONFIG SET latency-monitor-threshold 0 >/dev/null
stop_server
grep -h "orders " "$LOGS/orders-expiry.out"
grep -h "results:" "$LOGS/orders-beside.client" | sed 's/^/  purchases beside the expiry: /'
echo "longest Redis command while 100,000 reservations expired (latency monitor, 1 ms resolution): $LONGEST ms"
fi
echo "logs: $LOGS"

