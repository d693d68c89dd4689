# seckill-kafka tasks. `make` (or `make help`) lists them.
SHELL := /bin/bash
STACK := scripts/dev-stack.sh
# Loads the dev stack's addresses (KAFKA_BROKERS, REDIS_URL, DATABASE_URL) into a recipe.
STACK_ENV = eval "$$($(STACK) env)"

.DEFAULT_GOAL := help
.PHONY: help build test lint fmt demo stack-up stack-down stack-status clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build every program (release)
	cargo build --release --bins

test: ## Start the dev stack (installing what is missing) and run every test
	@$(STACK) up
	@$(STACK_ENV) && cargo test --all-targets || { \
	  echo; echo "make test: FAILED. Service logs: .dev/redis.log, .dev/pg-sock/postgres.log, .dev/dev_broker.log;"; \
	  echo "the stack is still up for a rerun (cargo test <name>); stop it with 'make stack-down'."; exit 1; }

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

demo: ## Start the dev stack and show it (the flash-sale pipeline itself lands with issue 3)
	@$(STACK) up
	@echo
	@echo "make demo: the dev stack above is up. The flash-sale pipeline (client_kafka -> server_kafka ->"
	@echo "Redis -> log_worker -> PostgreSQL) is not built yet: the five programs only load and check their"
	@echo "configuration so far. 'make test' runs the tests; 'make stack-down' stops the stack."

stack-up: ## Start Redis, PostgreSQL and the dev broker on loopback (data in .dev/)
	@$(STACK) up

stack-down: ## Stop what stack-up started
	@$(STACK) down

stack-status: ## Show what of the dev stack runs
	@$(STACK) status

clean: ## Stop the stack and remove build output and .dev/
	-@$(STACK) down
	cargo clean
	rm -rf .dev
