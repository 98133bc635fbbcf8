# tally: see README.md. Every target works from a fresh clone; tools come
# from the Go module proxy at pinned versions.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN       := $(CURDIR)/bin
BUF_VERSION     := v1.75.0
GRPCURL_VERSION := v1.9.3
LDFLAGS   := -s -w -X github.com/tally-accounting/tally/services/tally/cli.version=$(VERSION)
# Every module of the workspace (go.work), as package patterns.
MODULES   = $(shell $(GO) list -m -f '{{.Dir}}/...')
RUN_ARGS  ?=

.PHONY: all build test test-short proto proto-check lint bench run clean tools

all: build

## build: the binaries into bin/ (bin/tally is the all-in-one and the CLI)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/tally ./services/tally

## test: every module with the race detector, and the compose check
test:
	$(GO) test -race -count=1 $(MODULES)
	cd deploy && GOWORK=off $(GO) test -count=1 ./...

## bench: the benchmarks (figures for the issues' targets)
bench:
	$(GO) test -run '^$$' -bench . -benchmem $(MODULES)

SIM_LISTEN ?= 127.0.0.1:8786

## run: the main job on the embedded default: the OpenStack simulator, and
## every tally service in one process extracting from it into ./var/spool/ssm
run: build
	@$(BIN)/tally sim --listen $(SIM_LISTEN) --log-level warn & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	eval "$$($(BIN)/tally sim env --listen $(SIM_LISTEN))"; \
	$(BIN)/tally serve --config deploy/config/demo.yaml $(RUN_ARGS)

# buf is built once into bin/ from the module proxy. GOWORK=off: buf's own
# requirements must not be mixed into tally's workspace.
$(BIN)/buf:
	GOWORK=off GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

$(BIN)/grpcurl:
	GOWORK=off GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

tools: $(BIN)/buf $(BIN)/grpcurl

## proto: regenerate pkg/gen from proto/ (generators pinned in pkg/go.mod)
proto: $(BIN)/buf
	rm -rf pkg/gen
	$(BIN)/buf generate

## proto-check: fail when the committed generated code differs from make proto
proto-check: proto
	@git add -N pkg/gen && git diff --exit-code --stat -- pkg/gen || \
		{ echo "pkg/gen differs from 'make proto': run it and commit the result"; exit 1; }

## lint: gofmt, go vet, buf lint, and buf breaking against main
lint: $(BIN)/buf
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet $(MODULES)
	cd deploy && GOWORK=off $(GO) vet ./...
	$(BIN)/buf lint
	@if git rev-parse -q --verify main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		$(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with protos to compare against"; fi

clean:
	rm -rf $(BIN) var
