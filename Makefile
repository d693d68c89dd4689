# seckill-kafka tasks. `make` (or `make help`) lists them.
SHELL := /bin/bash
STACK := scripts/dev-stack.sh
# Loads the dev stack's addresses (KAFKA_BROKERS, REDIS_URL, DATABASE_URL) into a recipe.
STACK_ENV = eval "$$($(STACK) env)"

.DEFAULT_GOAL := help
.PHONY: help build test test-kafka lint fmt demo demo-cluster bench bench-server bench-gateway run-server run-client run-log-worker run-stream bench-stream run-zstd docker-build docker-run compose-up compose-demo compose-down stack-up stack-down stack-status clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build every program (release)
	cargo build --release --bins

# The tests run under cargo-nextest when it is installed (several test processes at once, the
# long ones first: .config/nextest.toml), else under cargo test, one binary after another.
NEXTEST := $(shell command -v cargo-nextest)
TEST_RUNNER = $(if $(NEXTEST),cargo nextest run,cargo test) --all-targets --no-fail-fast

test: ## Start the dev stack (installing what is missing), check the schemas, run every test
	@$(STACK) up
	@$(STACK) browser
	@$(MAKE) --no-print-directory -C schemas validate sync
	@$(STACK_ENV) && $(TEST_RUNNER) || { \
	  echo; echo "make test: FAILED. Where the services' logs are:"; $(STACK) status; \
	  echo "the stack is still up for a rerun (cargo test <name>); stop it with 'make stack-down'."; exit 1; }

# Tests that need Apache Kafka (#[ignore] elsewhere) run too; IGNORED= leaves them out, e.g.
# to check the suite against a dev broker started on its own.
IGNORED ?= 1

test-kafka: ## The suite against the broker named by KAFKA_BROKERS (topics created via Admin API), with the real-broker tests
	@[ -n "$${KAFKA_BROKERS:-}" ] || { echo "make test-kafka: set KAFKA_BROKERS=host:port of the broker to test against"; exit 2; }
	@$(STACK) up
	@$(MAKE) --no-print-directory -C schemas validate sync
	cargo run --quiet --bin dev_broker -- --create-topics-on "$$KAFKA_BROKERS"
	@$(STACK_ENV) && $(TEST_RUNNER) $(if $(IGNORED),$(if $(NEXTEST),--run-ignored all,-- --include-ignored))

lint: ## cargo fmt --check, clippy with warnings as errors, actionlint, docker compose config
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	@tools=$$(scripts/lint-tools.sh) \
	  && $$tools/actionlint .github/workflows/ci.yml \
	  && $$tools/docker-compose -f docker-compose.yml config --quiet \
	  && echo "actionlint and docker compose config: ok"

fmt: ## Format the code
	cargo fmt --all

demo: ## Flash-sale demo: 20 sales at once on one server fleet, then verify every sale
	@scripts/demo.sh

demo-cluster: ## The same demo on the local Redis Cluster (3 masters)
	@DEMO_REDIS=cluster scripts/demo.sh

bench: ## Criterion benches: serializers, and sink send throughput to the dev broker
	@$(STACK) up
	@$(STACK_ENV) && cargo bench --bench serializers --bench sink_throughput

bench-server: ## server_kafka vs redis-benchmark on its own script, latency at half load, log_worker pace
	@scripts/bench-server.sh

bench-gateway: ## purchases through seckill_gateway: accepted/s (wrk), click-to-outcome p99 at half rate
	@scripts/bench-gateway.sh

run-server: ## server_kafka on the dev stack until Ctrl-C (resets the activity's stock to 1,000)
	@$(STACK) up
	cargo build --release --bin server_kafka
	@$(STACK_ENV) && ./target/release/server_kafka --initial-stock 1000

run-client: ## client_kafka: one burst of flash-sale requests to the dev broker
	@$(STACK) up
	cargo build --release --bin client_kafka
	@$(STACK_ENV) && ./target/release/client_kafka

run-log-worker: ## log_worker on the dev stack until Ctrl-C (Redis log list -> PostgreSQL)
	@$(STACK) up
	cargo build --release --bin log_worker
	@$(STACK_ENV) && ./target/release/log_worker

# stream_sum bench size, workers and alternating rounds (the dev broker's benchmark topics
# have 12 partitions).
RECORDS ?= 1000000
WORKERS ?= 3
ROUNDS ?= 7

run-stream: ## stream_sum run on the dev broker until Ctrl-C (integer-list-input-avro -> integer-sum-output-avro)
	@$(STACK) up
	cargo build --release --bin stream_sum
	@$(STACK_ENV) && ./target/release/stream_sum run

bench-stream: ## stream_sum bench: RECORDS lists, WORKERS workers, ROUNDS rounds against plain librdkafka
	@$(STACK) up
	cargo build --release --bin stream_sum
	@$(STACK_ENV) && RUST_LOG=$${RUST_LOG:-warn} ./target/release/stream_sum bench --records $(RECORDS) --workers $(WORKERS) --rounds $(ROUNDS)

EVENTS ?= 1000000

run-zstd: ## zstd_producer: EVENTS UserEvents to user-events on the dev broker, then read them back
	@$(STACK) up
	cargo build --release --bin zstd_producer
	@$(STACK_ENV) && ./target/release/zstd_producer --events $(EVENTS) && ./target/release/zstd_producer --verify

IMAGE ?= seckill-kafka:latest
COMPOSE ?= docker compose

docker-build: ## Build the image (the programs and config.yaml; needs Docker)
	docker build -t $(IMAGE) .

docker-run: ## Run a program from the image, e.g. make docker-run ARGS="stream_sum --help"
	docker run --rm -it --network host $(IMAGE) $(or $(ARGS),server_kafka --help)

compose-up: ## Kafka 4 (KRaft), Redis, PostgreSQL, topics, server_kafka, log_worker, stream_sum
	$(COMPOSE) up -d --build --wait server_kafka log_worker stream_sum

compose-demo: compose-up ## The flash-sale demo in compose: create sale 1, client_kafka, then log_worker --verify --all
	$(COMPOSE) --profile demo run --rm create-activity
	$(COMPOSE) --profile demo run --rm client_kafka
	sleep 10
	$(COMPOSE) --profile demo run --rm verify

compose-down: ## Stop the compose stack and remove its volumes
	$(COMPOSE) --profile demo down -v

stack-up: ## Start Redis, PostgreSQL and the dev broker on loopback (`make stack-status` says where their files are)
	@$(STACK) up

stack-down: ## Stop what stack-up started
	@$(STACK) down

stack-status: ## Show what of the dev stack runs, and where its files and logs are
	@$(STACK) status

clean: ## Stop the stack and remove build output, .dev/ and PostgreSQL's files (wherever they live)
	-@$(STACK) clean
	cargo clean
