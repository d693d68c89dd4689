#!/usr/bin/env bash
# The local service stack on loopback, with its data under .dev/:
#   Redis       Debian's redis-server (installed with apt-get when missing), free port
#   PostgreSQL  the machine's PostgreSQL (installed with apt-get when missing), initdb into
#               .dev/pg, run as the `postgres` user when we are root, free port
#   Kafka       dev_broker (librdkafka's mock cluster), unless KAFKA_BROKERS names a broker
#
# usage: scripts/dev-stack.sh up | down | status | env
#   up      start what is not running (idempotent) and print what runs
#   down    stop what `up` started (found by pid files); data stays in .dev/
#   status  show what runs, exit 1 if something is down
#   env     print `export` lines for KAFKA_BROKERS, REDIS_URL and DATABASE_URL
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV=${SECKILL_DEV_DIR:-$ROOT/.dev}
PG_USER=seckill
PG_DB=seckill

log() { printf 'dev-stack: %s\n' "$*" >&2; }
die() { printf 'dev-stack: error: %s\n' "$*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

stop_by_pid_file() { # stop_by_pid_file NAME PIDFILE: SIGTERM, SIGKILL after 20 s
    if pid_alive "$2"; then
        local pid; pid=$(cat "$2")
        kill "$pid"
        wait_for 20 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        log "$1 stopped"
    fi
    rm -f "$2"
}

apt_install() {
    [ "$(id -u)" = 0 ] || die "$* missing and not root: install it (apt-get install $*) and retry"
    log "installing $* with apt-get"
    # No init system here: keep package scripts from trying to start services.
    local policy=/usr/sbin/policy-rc.d created_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    local status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
        >"$DEV/apt.log" 2>&1 || status=$?
    [ -n "$created_policy" ] && rm -f "$policy"
    [ "$status" = 0 ] || { tail -20 "$DEV/apt.log" >&2; die "apt-get install $* failed (log: $DEV/apt.log)"; }
}

# ---------------------------------------------------------------- Redis
# A dev CA and a certificate for 127.0.0.1 signed by it, in $DEV/tls (made once): Redis
# serves TLS on a second port and PostgreSQL accepts TLS with them, so rediss:// and
# sslmode are tested for real. The CA is DEV_TLS_CA in the env lines.
tls_cert() {
    local tls="$DEV/tls"
    [ -s "$tls/ca.crt" ] && [ -s "$tls/server.crt" ] && [ -s "$tls/pg.key" ] && return
    command -v openssl >/dev/null || apt_install openssl
    rm -rf "$tls"
    mkdir -p "$tls"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=seckill-kafka dev CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$tls/ca.key" -out "$tls/ca.crt" \
        && openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$tls/server.key" -out "$tls/server.csr" \
        && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
            > "$tls/server.ext" \
        && openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 3650 -extfile "$tls/server.ext" -out "$tls/server.crt"
    } >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl could not make the dev certificates"; }
    # PostgreSQL wants its own copy of the key, owned by it and private.
    cp "$tls/server.key" "$tls/pg.key"
    chmod 600 "$tls/pg.key" "$tls/server.key" "$tls/ca.key"
    chmod 755 "$tls"
    chmod 644 "$tls/server.crt" "$tls/ca.crt"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$tls/pg.key" 2>/dev/null || true; fi
    log "made the dev TLS certificates in $tls"
}

redis_up() {
    if pid_alive "$DEV/redis.pid"; then
        log "redis already running on port $(cat "$DEV/redis.port")"
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    local port; port=$(free_port)
    local tls_port; tls_port=$(free_port)
    mkdir -p "$DEV/redis"
    redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
        --pidfile "$DEV/redis.pid" --logfile "$DEV/redis.log" --dir "$DEV/redis" \
        --save '' --appendonly no --protected-mode yes \
        --tls-port "$tls_port" --tls-cert-file "$DEV/tls/server.crt" \
        --tls-key-file "$DEV/tls/server.key" --tls-ca-cert-file "$DEV/tls/ca.crt" \
        --tls-auth-clients no
    echo "$port" > "$DEV/redis.port"
    echo "$tls_port" > "$DEV/redis.tls.port"
    wait_for 20 redis-cli -h 127.0.0.1 -p "$port" ping || die "redis did not start; see $DEV/redis.log"
    log "redis on 127.0.0.1:$port is ready"
}

redis_down() {
    stop_by_pid_file redis "$DEV/redis.pid"
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    done
    return 1
}

# Runs a PostgreSQL server binary as the `postgres` user when we are root (initdb and
# postgres refuse to run as root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { [ -f "$DEV/pg/postmaster.pid" ] && as_pg "$(pg_bin)/pg_ctl" -D "$DEV/pg" status >/dev/null 2>&1; }

postgres_up() {
    local bin
    bin=$(pg_bin) || { apt_install postgresql; bin=$(pg_bin) || die "no PostgreSQL binaries after install"; }
    if pg_running; then
        log "postgres already running on port $(cat "$DEV/pg.port")"
        return
    fi
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user to run PostgreSQL as"
        runuser -u postgres -- test -x "$DEV" \
            || die "the postgres user cannot enter $DEV; put the checkout where other users can read it"
    fi
    mkdir -p "$DEV/pg-sock"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DEV/pg-sock"
    if [ ! -f "$DEV/pg/PG_VERSION" ]; then
        rm -rf "$DEV/pg"
        mkdir -p "$DEV/pg"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$DEV/pg"
        python3 -c 'import secrets; print(secrets.token_hex(12))' > "$DEV/pg.password"
        chmod 644 "$DEV/pg.password"
        log "initdb into $DEV/pg"
        as_pg "$bin/initdb" -D "$DEV/pg" -U "$PG_USER" --pwfile="$DEV/pg.password" \
            --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 \
            >"$DEV/pg-init.log" 2>&1 || { tail -20 "$DEV/pg-init.log" >&2; die "initdb failed"; }
        chmod 600 "$DEV/pg.password"
    fi
    local port; port=$(free_port)
    echo "$port" > "$DEV/pg.port"
    as_pg "$bin/pg_ctl" -D "$DEV/pg" -l "$DEV/pg-sock/postgres.log" -w -t 60 \
        -o "-p $port -k $DEV/pg-sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c ssl=on -c ssl_cert_file=$DEV/tls/server.crt -c ssl_key_file=$DEV/tls/pg.key" \
        start >/dev/null || { tail -20 "$DEV/pg-sock/postgres.log" >&2; die "postgres did not start"; }
    log "postgres on 127.0.0.1:$port is ready"
    local psql=("$bin/psql" -h "$DEV/pg-sock" -p "$port" -U "$PG_USER" -d postgres -qAt)
    if [ "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        as_pg "${psql[@]}" -c "CREATE DATABASE $PG_DB" >/dev/null
        log "created database $PG_DB"
    fi
}

postgres_down() {
    local bin
    bin=$(pg_bin) || return 0
    if pg_running; then
        as_pg "$bin/pg_ctl" -D "$DEV/pg" -m fast -w stop >/dev/null
        log "postgres stopped"
    fi
}

# ---------------------------------------------------------------- Kafka
external_kafka() { [ -n "${KAFKA_BROKERS:-}" ] && [ "$KAFKA_BROKERS" != "$(cat "$DEV/kafka.bootstrap" 2>/dev/null)" ]; }

kafka_up() {
    if external_kafka; then
        log "KAFKA_BROKERS=$KAFKA_BROKERS is set: using that broker, not starting dev_broker"
        return
    fi
    if pid_alive "$DEV/dev_broker.pid" && [ -s "$DEV/kafka.bootstrap" ]; then
        log "dev_broker already running at $(cat "$DEV/kafka.bootstrap")"
        return
    fi
    log "building dev_broker"
    (cd "$ROOT" && cargo build --quiet --bin dev_broker) || die "cargo build --bin dev_broker failed"
    local target_dir
    target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    rm -f "$DEV/kafka.bootstrap"
    setsid "$target_dir/debug/dev_broker" --bootstrap-file "$DEV/kafka.bootstrap" \
        >"$DEV/dev_broker.log" 2>&1 < /dev/null &
    echo $! > "$DEV/dev_broker.pid"
    wait_for 30 test -s "$DEV/kafka.bootstrap" \
        || { tail -20 "$DEV/dev_broker.log" >&2; die "dev_broker did not start"; }
    log "dev_broker at $(cat "$DEV/kafka.bootstrap") is ready"
}

kafka_down() {
    stop_by_pid_file dev_broker "$DEV/dev_broker.pid"
    rm -f "$DEV/kafka.bootstrap"
}

# ---------------------------------------------------------------- commands
env_lines() {
    local brokers=""
    if external_kafka; then brokers=$KAFKA_BROKERS
    elif [ -s "$DEV/kafka.bootstrap" ]; then brokers=$(cat "$DEV/kafka.bootstrap")
    fi
    [ -n "$brokers" ] && echo "export KAFKA_BROKERS=$brokers"
    [ -f "$DEV/redis.port" ] && echo "export REDIS_URL=redis://127.0.0.1:$(cat "$DEV/redis.port")/0"
    # For the TLS tests: Redis's TLS port and the certificate that signs both servers'.
    [ -f "$DEV/redis.tls.port" ] && echo "export DEV_REDIS_TLS_PORT=$(cat "$DEV/redis.tls.port")"
    [ -f "$DEV/tls/ca.crt" ] && echo "export DEV_TLS_CA=$DEV/tls/ca.crt"
    [ -f "$DEV/pg.port" ] && [ -f "$DEV/pg.password" ] && \
        echo "export DATABASE_URL=postgres://$PG_USER:$(cat "$DEV/pg.password")@127.0.0.1:$(cat "$DEV/pg.port")/$PG_DB"
    return 0
}

status() {
    local down=0
    if pid_alive "$DEV/redis.pid"; then echo "redis     running  127.0.0.1:$(cat "$DEV/redis.port")"
    else echo "redis     stopped"; down=1; fi
    if pg_bin >/dev/null && pg_running; then echo "postgres  running  127.0.0.1:$(cat "$DEV/pg.port") database $PG_DB"
    else echo "postgres  stopped"; down=1; fi
    if external_kafka; then echo "kafka     external $KAFKA_BROKERS"
    elif pid_alive "$DEV/dev_broker.pid"; then echo "kafka     running  $(cat "$DEV/kafka.bootstrap" 2>/dev/null) (dev_broker)"
    else echo "kafka     stopped"; down=1; fi
    return $down
}

mkdir -p "$DEV"
case "${1:-}" in
    up)
        tls_cert
        redis_up
        postgres_up
        kafka_up
        env_lines > "$DEV/env"
        status
        ;;
    down)
        kafka_down
        redis_down
        postgres_down
        rm -f "$DEV/env"
        ;;
    status) status ;;
    env) env_lines ;;
    *) echo "usage: $0 up | down | status | env" >&2; exit 2 ;;
esac
