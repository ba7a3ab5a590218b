# chatlog: `make up` runs the whole system, `make test` runs every test.
# Everything the targets need is installed on demand into .tools/ (nats-server) or comes with
# the Rust toolchain; nothing else is assumed on the machine.

SHELL := /bin/bash
CARGO ?= cargo
# Where cargo puts the binaries: $CARGO_TARGET_DIR when set, as many developers have it.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
CHATLOG := $(TARGET_DIR)/release/chatlog
DATA := data
HTTP ?= 127.0.0.1:8080
# The line protocol, for `nc` and `telnet` (`off` for none).
LINE ?= 127.0.0.1:5000
# Each component logs in as its own NATS user (infra/nats-auth.conf; development passwords);
# `chatlog setup` as admin, the only user that may create and update the streams.
ADMIN_NATS_URL ?= nats://admin:admin-dev-password@127.0.0.1:4222
NATS_URL ?= nats://edge:edge-dev-password@127.0.0.1:4222
HANDLERS_NATS_URL ?= nats://handlers:handlers-dev-password@127.0.0.1:4222
FUNCTIONS_NATS_URL ?= nats://functions:functions-dev-password@127.0.0.1:4222
# The pinned server version; infra/nats-server.sh installs it when PATH has none recent enough.
export NATS_SERVER_VERSION ?= 2.14.6
# The Go runtime settings of the nats-servers that `up`, `cluster-up` and `bench` start: JetStream
# allocates on every append, and each collection holds up the acks of its moment, so GOGC=400
# collects less often; GOMEMLIMIT bounds how far that lets the heap grow (bench/README.md has
# the figures).
export NATS_GC ?= GOGC=400 GOMEMLIMIT=1GiB

.PHONY: all up down bench test test-web test-browser browser-deps test-faults lint fmt nats-server build-release clean-data cluster-up cluster-down

all: test

nats-server:
	@infra/nats-server.sh >/dev/null

build-release:
	$(CARGO) build --release --bin chatlog

## up: start nats-server (nats.conf), set the streams up (`chatlog setup` as admin), start
## `chatlog up` in the background; web and API on $(HTTP)
up: build-release
	@mkdir -p $(DATA)
	@nats="$$(infra/nats-server.sh)"; \
	if [ -f $(DATA)/nats.pid ] && kill -0 "$$(cat $(DATA)/nats.pid)" 2>/dev/null; then \
	  echo "nats-server already running (pid $$(cat $(DATA)/nats.pid))"; \
	else \
	  env $(NATS_GC) "$$nats" -c nats.conf >$(DATA)/nats.log 2>&1 & echo $$! >$(DATA)/nats.pid; \
	  echo "nats-server $$("$$nats" --version) started (pid $$(cat $(DATA)/nats.pid), log $(DATA)/nats.log)"; \
	fi
	@NATS_URL=$(ADMIN_NATS_URL) $(CHATLOG) setup || { tail -n 5 $(DATA)/nats.log; exit 1; }
	@if [ -f $(DATA)/chatlog.pid ] && kill -0 "$$(cat $(DATA)/chatlog.pid)" 2>/dev/null; then \
	  echo "chatlog already running (pid $$(cat $(DATA)/chatlog.pid))"; \
	else \
	  NATS_URL=$(NATS_URL) CHATLOG_HANDLERS_NATS_URL=$(HANDLERS_NATS_URL) \
	  CHATLOG_FUNCTIONS=true CHATLOG_FUNCTIONS_NATS_URL=$(FUNCTIONS_NATS_URL) \
	  CHATLOG_HTTP=$(HTTP) CHATLOG_LINE=$(LINE) CHATLOG_DATA_DIR=$(DATA) CHATLOG_ALLOW_GUESTS=true CHATLOG_DEV=true \
	    $(CHATLOG) up >$(DATA)/chatlog.log 2>&1 & echo $$! >$(DATA)/chatlog.pid; \
	  echo "chatlog started (pid $$(cat $(DATA)/chatlog.pid), log $(DATA)/chatlog.log)"; \
	fi
	@python3 infra/wait-ready.py http://$(HTTP)/readyz 60 || { tail -n 20 $(DATA)/chatlog.log; exit 1; }
	@echo "chatlog is up: http://$(HTTP)/, and nc $(subst :, ,$(LINE)) (make down to stop)"

## down: stop exactly what `make up` started: chatlog first, then NATS (SIGTERM, then SIGKILL
## with a line saying so for what is still there after the grace; no pid file left)
down:
	@infra/stop.sh $(DATA)/chatlog.pid -- $(DATA)/nats.pid

## test: install what the tests need, then run every test (each starts its own nats-server):
## the Rust tests (unit, integration, fault suite), schemathesis against a running system on the
## OpenAPI document (infra/api-check.sh), the web client's unit tests (Node) and the web client in
## headless Chromium
test:
	@infra/k8s-validate.sh --install
	@infra/monitoring/promtool.sh --install
	@NATS_SERVER_BIN="$$(infra/nats-server.sh)" && export NATS_SERVER_BIN && \
	  echo "using $$NATS_SERVER_BIN ($$("$$NATS_SERVER_BIN" --version))" && \
	  $(CARGO) test --workspace --all-targets
	@CARGO="$(CARGO)" infra/api-check.sh
	@$(MAKE) --no-print-directory test-browser

## test-web: the web client's unit tests in Node (its history fold against the fixtures the
## history view's projection runs too, events/fixtures/fold/)
test-web: browser-deps
	@node --test tests/web/

## test-browser: the web client's unit tests, then the client in headless Chromium (installs
## chromium and playwright-core)
test-browser: test-web
	@$(CARGO) build --bin chatlog
	@NATS_SERVER_BIN="$$(infra/nats-server.sh)" CHATLOG_BIN=$(TARGET_DIR)/debug/chatlog \
	  node tests/browser/test.mjs

browser-deps:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || { \
	  echo "installing chromium (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq chromium >/dev/null; }; }
	@command -v node >/dev/null || { \
	  echo "installing node (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } || \
	  { sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq nodejs npm >/dev/null; }; }
	@[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund --silent)

## bench: a fresh system on its own ports, the standard workloads, results in bench/results/
bench: build-release nats-server
	@bench/run.sh

## test-faults: the fault suite alone (kill -9 of NATS, of a cluster leader, of an edge; a node
## lost under reads; an outage; a reconnect storm; SIGTERM in any state; a client that never reads;
## a file's bucket leader killed; files swept)
test-faults:
	@NATS_SERVER_BIN="$$(infra/nats-server.sh)" && export NATS_SERVER_BIN && \
	  $(CARGO) test -p chatlog --test faults --test storm --test shutdown --test handlers --test presence \
	  --test slow_consumer --test file_faults --test file_sweep -- --nocapture

CLUSTER := $(DATA)/cluster
CLUSTER_URLS = nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233
creds = $(subst nats://,nats://$(1)@,$(CLUSTER_URLS))

## cluster-up: 3 JetStream nodes, 2 edges (:8081, :8082), 2 replicas of every handler
cluster-up: build-release
	@mkdir -p $(CLUSTER)
	@nats="$$(infra/nats-server.sh)"; \
	for n in 1 2 3; do \
	  env $(NATS_GC) "$$nats" -c infra/cluster/n$$n.conf >$(CLUSTER)/n$$n.log 2>&1 & echo $$! >$(CLUSTER)/n$$n.pid; \
	done; echo "nats-server n1 n2 n3 started"
	@NATS_URL="$(call creds,admin:admin-dev-password)" $(CHATLOG) setup
	@for e in 1 2; do \
	  NATS_URL="$(call creds,edge:edge-dev-password)" CHATLOG_DATA_DIR=$(CLUSTER)/edge$$e \
	  CHATLOG_JWT_SECRET=cluster-dev-secret-shared-by-every-edge CHATLOG_DEV=true \
	    $(CHATLOG) edge --http 127.0.0.1:808$$e >$(CLUSTER)/edge$$e.log 2>&1 & \
	  echo $$! >$(CLUSTER)/edge$$e.pid; \
	done; echo "edges on :8081 and :8082 started"
	@python3 infra/wait-ready.py http://127.0.0.1:8081/readyz 90
	@for h in history presence notifications; do for r in a b; do \
	  NATS_URL="$(call creds,handlers:handlers-dev-password)" CHATLOG_VIEWS_DIR=$(CLUSTER)/views CHATLOG_DEV=true \
	    $(CHATLOG) handler $$h --replica $$r >$(CLUSTER)/$$h-$$r.log 2>&1 & \
	  echo $$! >$(CLUSTER)/$$h-$$r.pid; \
	done; done; echo "handlers history, presence, notifications (replicas a, b) started"
	@python3 infra/wait-ready.py http://127.0.0.1:8082/readyz 90
	@echo "cluster up: http://127.0.0.1:8081/ and http://127.0.0.1:8082/ (make cluster-down to stop)"

## cluster-down: stop exactly what cluster-up started: the edges, then the handlers, then NATS
cluster-down:
	@infra/stop.sh $(CLUSTER)/edge*.pid -- $(CLUSTER)/history-*.pid $(CLUSTER)/presence-*.pid \
	  $(CLUSTER)/notifications-*.pid -- $(CLUSTER)/n*.pid -- $(CLUSTER)/*.pid

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## clean-data: forget the local log and views (make down first)
clean-data:
	rm -rf $(DATA)
