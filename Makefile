# servelab — the two commands a newcomer needs are `make run` and `make test`.
GO       ?= go
BIN      := bin/servelab
SHARED   ?= ../shared
# The main job replays the Azure LLM 2023 conversation trace when ../shared has it, else the
# first 3,000 rows of it shipped in the repo.
TRACE    ?= $(if $(wildcard $(SHARED)/traces/azure_llm_2023_conv.csv),$(SHARED)/traces/azure_llm_2023_conv.csv,examples/traces/azure_conv_3000.csv)
RUN_ARGS ?= --instances 4 --model llama-3.1-8b --gpu a100-80g --rate-scale 4 --goodput ttft:2000,tpot:100
# A second table on Mooncake's conversation trace, whose shared prefixes make routing a
# trade-off between cache hits and load balance.
MOONCAKE ?= $(if $(wildcard $(SHARED)/traces/mooncake_conversation.jsonl),$(SHARED)/traces/mooncake_conversation.jsonl,examples/traces/mooncake_conv_500.jsonl)

.PHONY: all build run test race lint bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/servelab

run: build
	$(BIN) compare --trace $(TRACE) $(RUN_ARGS) \
		--router round-robin --router least-request --router power-of-two \
		--router least-kv --router weighted
	@echo
	$(BIN) compare --trace $(MOONCAKE) --instances 4 --model llama-3.1-8b --gpu h100 --goodput ttft:2000,tpot:100 \
		--router least-request --router prefix-affinity --router weighted \
		--router examples/router/llm-d-default.yaml
	@echo
	@echo "== The real engine: a synthesised model, profiled on this machine, calibrates the simulator"
	$(BIN) model synth --preset tiny --out bin/models/tiny
	$(BIN) profile --model bin/models/tiny --num-gpu-blocks-override 1024 --quick --out bin/models/tiny-profile.json
	$(BIN) trace synth --requests 300 --rate 20 --input-mean 200 --output-mean 50 --prefix-groups 8 --seed 1 --out bin/models/tiny-trace.jsonl
	$(BIN) compare --trace bin/models/tiny-trace.jsonl --instances 2 --model bin/models/tiny/config.json --latency profile:bin/models/tiny-profile.json \
		--router round-robin --router prefix-affinity --router weighted
	@echo
	@echo "== The real path: predicted (the simulator, calibrated on the engines' own steps) vs measured (2 engine processes behind the router) on Mooncake"
	$(BIN) fidelity --trace examples/traces/mooncake_conv_500.jsonl --max-requests 200 --engines 2 --model bin/models/tiny \
		--router round-robin --router prefix-affinity
	@echo "serve it with: $(BIN) up --engines 2 --model bin/models/tiny --router prefix-affinity --port 8080"
	@echo "and replay a trace: $(BIN) bench --endpoint http://127.0.0.1:8080 --model bin/models/tiny --trace examples/traces/mooncake_conv_500.jsonl --token-scale 0.03125 --max-model-len 512 --rate-scale 4"

test: lint
	$(GO) test ./...

# The packages with goroutines, under the race detector.
race:
	$(GO) test -race ./engine/ ./engine/server/ ./engine/cpu/ ./engine/model/ ./real/... ./web/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: build
	bash scripts/bench.sh

clean:
	rm -rf bin
