# throttle-central: run `make help` for the targets.

GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Upper bound for the whole test run; the suite is sized to finish far below
# it on a 2-core machine. Packages run one at a time (-p 1): the cluster,
# demo and fault tests measure real seconds, and two of them sharing 2
# cores under the race detector starve each other's timers.
TEST_TIMEOUT ?= 20m

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every binary into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: run
run: build ## Start three centrals on 127.0.0.1 (HTTP 8081-8083); Ctrl-C stops them
	scripts/cluster.sh run

.PHONY: demo
demo: ## Run the end-to-end demo (about 75 s): 3 centrals, 4 agents, kills, a RESULT line
	scripts/demo.sh

.PHONY: sim
sim: build ## Run the accuracy simulator and print its table
	$(BIN)/throttle-sim

.PHONY: test
test: ## Run all tests with the race detector (what CI runs)
	$(GO) test -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: bench
bench: build ## Run the Go benchmarks and the accuracy simulator
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(BIN)/throttle-sim

.PHONY: lint
lint: ## Check formatting, run go vet and staticcheck
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

.PHONY: ci
ci: lint test ## Run lint and the tests

.PHONY: clean
clean: ## Remove build output
	rm -rf $(BIN)
