# chatlog: `make up` runs the whole system, `make test` runs every test.
# Everything the targets need is installed on demand into .tools/ (nats-server) or comes with
# the Rust toolchain; nothing else is assumed on the machine.

SHELL := /bin/bash
CARGO ?= cargo
DATA := data
HTTP ?= 127.0.0.1:8080
# Each component logs in as its own NATS user (infra/nats-auth.conf; development passwords).
NATS_URL ?= nats://edge:edge-dev-password@127.0.0.1:4222
HANDLERS_NATS_URL ?= nats://handlers:handlers-dev-password@127.0.0.1:4222
# The pinned server version; infra/nats-server.sh installs it when PATH has none recent enough.
export NATS_SERVER_VERSION ?= 2.14.6

.PHONY: all up down test lint fmt nats-server build-release clean-data

all: test

nats-server:
	@infra/nats-server.sh >/dev/null

build-release:
	$(CARGO) build --release --bin chatlog

## up: start nats-server (nats.conf) and `chatlog up` in the background; web and API on $(HTTP)
up: build-release
	@mkdir -p $(DATA)
	@nats="$$(infra/nats-server.sh)"; \
	if [ -f $(DATA)/nats.pid ] && kill -0 "$$(cat $(DATA)/nats.pid)" 2>/dev/null; then \
	  echo "nats-server already running (pid $$(cat $(DATA)/nats.pid))"; \
	else \
	  "$$nats" -c nats.conf >$(DATA)/nats.log 2>&1 & echo $$! >$(DATA)/nats.pid; \
	  echo "nats-server $$("$$nats" --version) started (pid $$(cat $(DATA)/nats.pid), log $(DATA)/nats.log)"; \
	fi
	@if [ -f $(DATA)/chatlog.pid ] && kill -0 "$$(cat $(DATA)/chatlog.pid)" 2>/dev/null; then \
	  echo "chatlog already running (pid $$(cat $(DATA)/chatlog.pid))"; \
	else \
	  NATS_URL=$(NATS_URL) CHATLOG_HANDLERS_NATS_URL=$(HANDLERS_NATS_URL) \
	  CHATLOG_HTTP=$(HTTP) CHATLOG_DATA_DIR=$(DATA) CHATLOG_ALLOW_GUESTS=true \
	    target/release/chatlog up >$(DATA)/chatlog.log 2>&1 & echo $$! >$(DATA)/chatlog.pid; \
	  echo "chatlog started (pid $$(cat $(DATA)/chatlog.pid), log $(DATA)/chatlog.log)"; \
	fi
	@python3 infra/wait-ready.py http://$(HTTP)/readyz 60 || { tail -n 20 $(DATA)/chatlog.log; exit 1; }
	@echo "chatlog is up: http://$(HTTP)/ (make down to stop)"

## down: stop exactly what `make up` started
down:
	@for name in chatlog nats; do \
	  pidfile=$(DATA)/$$name.pid; \
	  if [ -f $$pidfile ]; then \
	    pid=$$(cat $$pidfile); \
	    if kill -0 $$pid 2>/dev/null; then \
	      kill $$pid; \
	      for _ in $$(seq 50); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	      echo "stopped $$name (pid $$pid)"; \
	    fi; \
	    rm -f $$pidfile; \
	  fi; \
	done

## test: install what the tests need, then run every test (each starts its own nats-server)
test:
	@NATS_SERVER_BIN="$$(infra/nats-server.sh)" && export NATS_SERVER_BIN && \
	  echo "using $$NATS_SERVER_BIN ($$("$$NATS_SERVER_BIN" --version))" && \
	  $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## clean-data: forget the local log and views (make down first)
clean-data:
	rm -rf $(DATA)
