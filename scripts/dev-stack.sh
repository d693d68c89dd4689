#!/usr/bin/env bash
# The local service stack on loopback, its files under .dev/ (PostgreSQL's in PG_HOME):
#   Redis       Debian's redis-server, free port, files in .dev/redis
#   Cluster     three more redis-server as a Redis Cluster (3 masters), files in .dev/redis-cluster
#   PostgreSQL  the machine's PostgreSQL 15+, run as the `postgres` user when we are root,
#               free port, files in PG_HOME = /var/tmp/seckill-kafka-<uid>/<hash of .dev>
#               (the postgres user cannot enter a checkout under root's 0700 home)
#   Kafka       dev_broker (librdkafka's mock cluster), unless KAFKA_BROKERS names a broker
#
# usage: scripts/dev-stack.sh deps | up | down | kafka-restart | status | env | clean
#   deps    install with apt-get what the build and the stack need and the machine lacks
#   browser install Debian's chromium when missing (the live page's test; make test runs it)
#   up      deps, then start what is not running (idempotent) and print what runs
#   down    stop what `up` started (found by pid files); data stays
#   kafka-restart [--if-dev]  a fresh dev_broker (its topics empty again, a new port) and
#           print the `env` lines; --if-dev: with an external KAFKA_BROKERS, only print them
#   status  show what runs and where its files and logs are, exit 1 if something is down
#   env     print `export` lines for KAFKA_BROKERS, REDIS_URL, DATABASE_URL and the dev
#           extras (DEV_REDIS_CLUSTER_URLS, DEV_TLS_CA, DEV_REDIS_TLS_PORT)
#   clean   down, then remove .dev/ and PG_HOME
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV=${SECKILL_DEV_DIR:-$ROOT/.dev}
mkdir -p "$DEV"
PG_USER=seckill
PG_DB=seckill

log() { printf 'dev-stack: %s\n' "$*" >&2; }
die() { printf 'dev-stack: error: %s\n' "$*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port for a Redis Cluster node: at most 55535 (its cluster bus listens on the port
# plus 10000), with that bus port free too. The kernel's ephemeral range reaches 60999, so
# a port picked by bind(0) is above the limit about one time in five.
free_cluster_port() {
    python3 - <<'PY'
import random, socket
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(1000):
    port = random.randint(20000, 55535)
    if free(port) and free(port + 10000):
        print(port)
        break
else:
    raise SystemExit("no free port pair for a cluster node")
PY
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

# What the build and the stack need from Debian, installed in one apt-get call (one
# `apt-get update`): the build's C side (librdkafka through CMake, linked against the
# system's OpenSSL, libcurl and zlib), the servers, and openssl for the dev certificates.
missing_packages() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v pkg-config >/dev/null && pkg-config --exists openssl || missing+=(libssl-dev)
    command -v pkg-config >/dev/null && pkg-config --exists libcurl || missing+=(libcurl4-openssl-dev)
    command -v pkg-config >/dev/null && pkg-config --exists zlib || missing+=(zlib1g-dev)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v redis-server >/dev/null || missing+=(redis-server)
    pg_bin >/dev/null || missing+=(postgresql)
    echo "${missing[@]}"
}

# The live page's test drives a real browser: Debian's chromium, headless (make test only).
browser() {
    command -v chromium >/dev/null && return
    apt_install chromium
    command -v chromium >/dev/null || die "still no chromium after apt-get"
}

deps() {
    local missing; missing=$(missing_packages)
    [ -z "$missing" ] && return
    # shellcheck disable=SC2086 # one word a package
    apt_install $missing
    missing=$(missing_packages)
    [ -z "$missing" ] || die "still missing after apt-get: $missing"
}

# ---------------------------------------------------------------- Redis
# A dev CA and a certificate for 127.0.0.1 signed by it, in $DEV/tls (made once): Redis
# serves TLS on a second port and PostgreSQL accepts TLS with them, so rediss:// and
# sslmode are tested for real. The CA is DEV_TLS_CA in the env lines.
tls_cert() {
    local tls="$DEV/tls"
    [ -s "$tls/ca.crt" ] && [ -s "$tls/server.crt" ] && [ -s "$tls/server.key" ] && return
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
    chmod 600 "$tls/server.key" "$tls/ca.key"
    chmod 644 "$tls/server.crt" "$tls/ca.crt"
    log "made the dev TLS certificates in $tls"
}

redis_up() {
    if pid_alive "$DEV/redis.pid"; then
        log "redis already running on port $(cat "$DEV/redis.port")"
        return
    fi
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

# ---------------------------------------------------------------- Redis Cluster
# Three masters on loopback (no replicas, no persistence), for the cluster tests and
# `make demo-cluster`; its seed nodes are DEV_REDIS_CLUSTER_URLS in the env lines (not
# SECKILL_REDIS_CLUSTER_URLS: a program uses the cluster only when told to). A cluster
# that is not running is made anew on free ports. `cluster-require-full-coverage no`: one
# dead master does not stop the others.
CLUSTER_DIR="$DEV/redis-cluster"

cluster_ports() { cat "$CLUSTER_DIR/ports" 2>/dev/null || true; }

cluster_running() {
    local port
    [ -s "$CLUSTER_DIR/ports" ] || return 1
    for port in $(cluster_ports); do
        pid_alive "$CLUSTER_DIR/$port/redis.pid" || return 1
    done
    redis-cli -h 127.0.0.1 -p "$(cluster_ports | head -1)" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

cluster_up() {
    if cluster_running; then
        log "redis cluster already running on ports $(cluster_ports | tr '\n' ' ')"
        return
    fi
    cluster_down
    rm -rf "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR"
    local port nodes=() attempt started
    for _ in 1 2 3; do
        # A free port can be taken by another process before the node binds it: try another.
        started=
        for attempt in 1 2 3; do
            port=$(free_cluster_port)
            mkdir -p "$CLUSTER_DIR/$port"
            redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
                --pidfile "$CLUSTER_DIR/$port/redis.pid" --logfile "$CLUSTER_DIR/$port/redis.log" \
                --dir "$CLUSTER_DIR/$port" --save '' --appendonly no \
                --cluster-enabled yes --cluster-config-file nodes.conf \
                --cluster-node-timeout 2000 --cluster-require-full-coverage no
            if wait_for 20 sh -c "[ -s '$CLUSTER_DIR/$port/redis.pid' ] && redis-cli -h 127.0.0.1 -p $port cluster myid"; then
                started=1
                break
            fi
            log "cluster node on port $port did not start (attempt $attempt); see $CLUSTER_DIR/$port/redis.log"
        done
        [ -n "$started" ] || die "a cluster node did not start; see $CLUSTER_DIR/*/redis.log"
        echo "$port" >> "$CLUSTER_DIR/ports"
        nodes+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 \
        || { tail -20 "$CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
    wait_for 30 cluster_running || die "the redis cluster did not reach state ok; see $CLUSTER_DIR"
    log "redis cluster (3 masters) on ports $(cluster_ports | tr '\n' ' ')is ready"
}

cluster_down() {
    local port stopped=
    for port in $(cluster_ports); do
        if pid_alive "$CLUSTER_DIR/$port/redis.pid"; then
            stop_by_pid_file "cluster node $port" "$CLUSTER_DIR/$port/redis.pid" 2>/dev/null
            stopped=1
        fi
    done
    [ -n "$stopped" ] && log "redis cluster stopped"
    return 0
}

# ---------------------------------------------------------------- PostgreSQL
# PostgreSQL runs as the `postgres` user when we are root (initdb and postgres refuse root),
# and that user cannot enter a checkout under root's 0700 home. So its files (data, socket,
# TLS key copy, log) live in PG_HOME, outside the checkout, in a folder named by a hash of
# this checkout's .dev/ (two checkouts keep two servers), short enough for a Unix socket
# path (~107 bytes). .dev/pg.home records it, so status, down and clean find it.
pg_home() {
    if [ -s "$DEV/pg.home" ]; then cat "$DEV/pg.home"; return; fi
    local hash; hash=$(printf '%s' "$(cd "$DEV" && pwd -P)" | sha256sum | cut -c1-12)
    echo "/var/tmp/seckill-kafka-$(id -u)/$hash"
}
PG_HOME=$(pg_home)

pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    done
    return 1
}

# Runs a PostgreSQL server binary as the `postgres` user when we are root (from /: that
# user may not enter the directory we are in).
as_pg() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

pg_running() { [ -f "$PG_HOME/data/postmaster.pid" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; }

# PG_HOME and its parent, made by us, refused if someone else made them first (/var/tmp is
# shared by every user).
pg_home_make() {
    local parent; parent=$(dirname "$PG_HOME")
    mkdir -p "$parent" "$PG_HOME"
    chmod 755 "$parent"
    [ -O "$parent" ] || die "$parent belongs to another user: remove it or set SECKILL_DEV_DIR"
    printf '%s\n' "$(cd "$DEV" && pwd -P)" > "$PG_HOME/checkout"
    echo "$PG_HOME" > "$DEV/pg.home"
    mkdir -p "$PG_HOME/sock" "$PG_HOME/tls"
    cp "$DEV/tls/server.crt" "$PG_HOME/tls/server.crt"
    cp "$DEV/tls/server.key" "$PG_HOME/tls/server.key"
    chmod 600 "$PG_HOME/tls/server.key"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user to run PostgreSQL as"
        chown -R postgres:postgres "$PG_HOME"
    fi
}

# Before PG_HOME, PostgreSQL's files were in .dev/pg: stop such a server, drop its files.
legacy_postgres_down() {
    [ -d "$DEV/pg" ] || return 0
    if [ -f "$DEV/pg/postmaster.pid" ]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$DEV/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DEV/pg" "$DEV/pg-sock"
    log "removed the old PostgreSQL files from $DEV/pg (they now live in $PG_HOME)"
}

postgres_up() {
    local bin
    bin=$(pg_bin) || die "no PostgreSQL server binaries (run: $0 deps)"
    legacy_postgres_down
    if pg_running; then
        log "postgres already running on port $(cat "$DEV/pg.port")"
        return
    fi
    pg_home_make
    # PG_HOME outlives a checkout that was deleted and cloned again at the same path: its
    # data is there, the password (kept in the checkout) is gone. A new one is set below.
    local new_password=0
    if [ ! -s "$DEV/pg.password" ]; then
        python3 -c 'import secrets; print(secrets.token_hex(12))' > "$DEV/pg.password"
        new_password=1
    fi
    chmod 600 "$DEV/pg.password"
    if [ ! -f "$PG_HOME/data/PG_VERSION" ]; then
        rm -rf "$PG_HOME/data"
        new_password=0
        # initdb reads the password from a file the postgres user can read; it goes at once.
        install -m 600 "$DEV/pg.password" "$PG_HOME/pwfile"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_HOME/pwfile"
        log "initdb into $PG_HOME/data"
        local status=0
        as_pg "$bin/initdb" -D "$PG_HOME/data" -U "$PG_USER" --pwfile="$PG_HOME/pwfile" \
            --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 \
            >"$DEV/pg-init.log" 2>&1 || status=$?
        rm -f "$PG_HOME/pwfile"
        [ "$status" = 0 ] || { tail -20 "$DEV/pg-init.log" >&2; die "initdb failed"; }
    fi
    local port; port=$(free_port)
    echo "$port" > "$DEV/pg.port"
    as_pg "$bin/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/postgres.log" -w -t 60 \
        -o "-p $port -k $PG_HOME/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c ssl=on -c ssl_cert_file=$PG_HOME/tls/server.crt -c ssl_key_file=$PG_HOME/tls/server.key" \
        start >/dev/null || { tail -20 "$PG_HOME/postgres.log" >&2; die "postgres did not start"; }
    log "postgres on 127.0.0.1:$port is ready"
    local psql=("$bin/psql" -h "$PG_HOME/sock" -p "$port" -U "$PG_USER" -d postgres -qAt)
    if [ "$new_password" = 1 ]; then
        # Local connections are trusted (initdb --auth-local=trust): set this checkout's.
        as_pg "${psql[@]}" -c "ALTER ROLE $PG_USER PASSWORD '$(cat "$DEV/pg.password")'" >/dev/null
        log "postgres: the data in $PG_HOME outlived its checkout's password; set a new one"
    fi
    if [ "$(as_pg "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        as_pg "${psql[@]}" -c "CREATE DATABASE $PG_DB" >/dev/null
        log "created database $PG_DB"
    fi
}

postgres_down() {
    local bin
    bin=$(pg_bin) || return 0
    if pg_running; then
        as_pg "$bin/pg_ctl" -D "$PG_HOME/data" -m fast -w stop >/dev/null
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
# Values quoted for the shell: a checkout path may hold spaces.
export_line() { printf 'export %s=%q\n' "$1" "$2"; }

env_lines() {
    local brokers=""
    if external_kafka; then brokers=$KAFKA_BROKERS
    elif [ -s "$DEV/kafka.bootstrap" ]; then brokers=$(cat "$DEV/kafka.bootstrap")
    fi
    [ -n "$brokers" ] && export_line KAFKA_BROKERS "$brokers"
    [ -f "$DEV/redis.port" ] && export_line REDIS_URL "redis://127.0.0.1:$(cat "$DEV/redis.port")/0"
    # For the TLS tests: Redis's TLS port and the certificate that signs both servers'.
    [ -f "$DEV/redis.tls.port" ] && export_line DEV_REDIS_TLS_PORT "$(cat "$DEV/redis.tls.port")"
    if [ -s "$CLUSTER_DIR/ports" ]; then
        export_line DEV_REDIS_CLUSTER_URLS "$(cluster_ports | sed 's|^|redis://127.0.0.1:|' | paste -sd, -)"
    fi
    [ -f "$DEV/tls/ca.crt" ] && export_line DEV_TLS_CA "$DEV/tls/ca.crt"
    [ -f "$DEV/pg.port" ] && [ -f "$DEV/pg.password" ] && \
        export_line DATABASE_URL "postgres://$PG_USER:$(cat "$DEV/pg.password")@127.0.0.1:$(cat "$DEV/pg.port")/$PG_DB"
    return 0
}

status() {
    local down=0
    if pid_alive "$DEV/redis.pid"; then echo "redis     running  127.0.0.1:$(cat "$DEV/redis.port")  files $DEV/redis, log $DEV/redis.log"
    else echo "redis     stopped"; down=1; fi
    if cluster_running; then echo "cluster   running  127.0.0.1:$(cluster_ports | paste -sd, - | sed 's/,/,127.0.0.1:/g')  files $CLUSTER_DIR"
    else echo "cluster   stopped"; down=1; fi
    if pg_bin >/dev/null && pg_running; then echo "postgres  running  127.0.0.1:$(cat "$DEV/pg.port") database $PG_DB  files $PG_HOME, log $PG_HOME/postgres.log"
    else echo "postgres  stopped  files $PG_HOME"; down=1; fi
    if external_kafka; then echo "kafka     external $KAFKA_BROKERS"
    elif pid_alive "$DEV/dev_broker.pid"; then echo "kafka     running  $(cat "$DEV/kafka.bootstrap" 2>/dev/null) (dev_broker)  log $DEV/dev_broker.log"
    else echo "kafka     stopped"; down=1; fi
    return $down
}

# Everything `up` made, wherever it lives: the servers, .dev/ and PG_HOME.
clean() {
    kafka_down
    redis_down
    cluster_down
    postgres_down
    rm -rf "$PG_HOME"
    rmdir "$(dirname "$PG_HOME")" 2>/dev/null || true
    rm -rf "$DEV"
    log "removed $DEV and $PG_HOME"
}

case "${1:-}" in
    deps) deps ;;
    browser) browser ;;
    up)
        deps
        tls_cert
        redis_up
        cluster_up
        postgres_up
        kafka_up
        env_lines > "$DEV/env"
        status
        ;;
    down)
        kafka_down
        redis_down
        cluster_down
        postgres_down
        rm -f "$DEV/env"
        ;;
    kafka-restart)
        # KAFKA_BROKERS from an earlier `eval "$(... env)"` names the dev broker being
        # replaced; any other value is a real broker, which is not ours to restart.
        if external_kafka; then
            [ "${2:-}" = --if-dev ] || die "KAFKA_BROKERS=$KAFKA_BROKERS is not the dev broker: nothing to restart"
            log "KAFKA_BROKERS=$KAFKA_BROKERS is an external broker: left as it is"
        else
            unset KAFKA_BROKERS
            kafka_down
            kafka_up
        fi
        env_lines | tee "$DEV/env"
        ;;
    clean) clean ;;
    status) status ;;
    env) env_lines ;;
    *) echo "usage: $0 deps | up | down | kafka-restart [--if-dev] | status | env | clean" >&2; exit 2 ;;
esac
