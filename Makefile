# servelab — the two commands a newcomer needs are `make run` and `make test`.
GO       ?= go
BIN      := bin/servelab
SHARED   ?= ../shared
# The main job runs the shipped example experiments on the Azure LLM 2023 conversation trace
# and Mooncake's, from ../shared when it has them, else their first rows shipped in the repo.
TRACE    ?= $(if $(wildcard $(SHARED)/traces/azure_llm_2023_conv.csv),$(SHARED)/traces/azure_llm_2023_conv.csv,examples/traces/azure_conv_3000.csv)
MOONCAKE ?= $(if $(wildcard $(SHARED)/traces/mooncake_conversation.jsonl),$(SHARED)/traces/mooncake_conversation.jsonl,examples/traces/mooncake_conv_500.jsonl)
# make run's fidelity tables replay the first rows of the traces shipped in the repo.
FIDELITY_TRACES := examples/traces/mooncake_conv_500.jsonl examples/traces/azure_conv_3000.csv
# make run finishes on a busy laptop too: fidelity waits up to 20 s per run for other
# processes to leave the CPUs, then measures anyway and marks the run CONTENDED
# (make bench refuses such a machine instead).
FIDELITY_FLAGS ?= --allow-busy --busy-wait 20s

.PHONY: all build run test race lint bench clean generate tools image gpu-bundle

all: build

build:
	$(GO) build -o $(BIN) ./cmd/servelab

run: build
	@echo "== Which router for 4 x A100 serving Llama-3.1-8B on Azure's conversation trace at 4x its rate? (experiments/examples/azure-routers.yaml)"
	rm -rf runs/azure-routers runs/mooncake-load-sweep
	$(BIN) run experiments/examples/azure-routers.yaml --trace $(TRACE)
	@echo
	@echo "== Prefix-affinity vs llm-d's weighted scorers as Mooncake's load grows (experiments/examples/mooncake-load-sweep.yaml)"
	$(BIN) run experiments/examples/mooncake-load-sweep.yaml --trace $(MOONCAKE) --quiet
	@echo
	@echo "== The real path: predicted (the simulator, calibrated on the engines' own steps, on the measured send times) vs measured,"
	@echo "   each world twice: round-robin, least-request and prefix-affinity behind 2 engine processes, and 1 engine alone"
	@echo "   (where there is nothing to route) under the vllm, static and vllm:max_num_batched_tokens=256 batch policies, on both shipped traces"
	$(BIN) model synth --preset tiny --out bin/models/tiny
	for trace in $(FIDELITY_TRACES); do \
		$(BIN) fidelity $(FIDELITY_FLAGS) --trace $$trace --max-requests 200 --engines 2 --model bin/models/tiny && echo && \
		$(BIN) fidelity $(FIDELITY_FLAGS) --trace $$trace --max-requests 200 --engines 1 --model bin/models/tiny --router round-robin \
			--batch vllm --batch static --batch vllm:max_num_batched_tokens=256 && echo || exit 1; \
	done
	@echo
	@echo "reports:   runs/azure-routers/report.html, runs/mooncake-load-sweep/report.html (and report.md beside them)"
	@echo "dashboard: $(BIN) dash --runs runs, then open http://127.0.0.1:8090"
	@echo "real engines: $(BIN) run experiments/examples/real-tiny.yaml, or serve with $(BIN) up --engines 2 --model bin/models/tiny --router prefix-affinity --port 8080"
	@echo "and replay a trace: $(BIN) bench --endpoint http://127.0.0.1:8080 --model bin/models/tiny --trace examples/traces/mooncake_conv_500.jsonl --rate-scale 4   (token counts scaled to the model's context: --token-scale auto)"

test: lint
	$(GO) test ./...

# The packages with goroutines, under the race detector.
race:
	$(GO) test -race ./engine/ ./engine/server/ ./engine/cpu/ ./engine/model/ ./cuda/gpu/ ./real/... ./experiments/... ./web/... ./cuda/telemetry/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: build
	bash scripts/bench.sh

# What scripts/gpu-check.sh runs on a GPU machine without Go (issue 15): the CUDA packages'
# test binaries and servelab, stripped and gzipped into bin/gpu-bundle, checked to travel
# with the working tree within the device tool's 64 MiB. README: "GPU (CUDA) backend".
gpu-bundle:
	bash scripts/gpu-bundle.sh

# The API's deepcopy functions and CRD YAML, generated from api/ by controller-gen (pinned in
# hack/tools, built once into ~/.cache/servelab); api/v1alpha1's tests fail when the committed
# files differ from what this writes. The controller's ClusterRole (config/rbac/role.yaml) comes
# from the +kubebuilder:rbac markers in real/controller, checked by its tests the same way.
CONTROLLER_GEN_ARGS := object paths=./api/... crd:crdVersions=v1 output:crd:dir=config/crd/bases
CONTROLLER_GEN_RBAC_ARGS := rbac:roleName=servelab-controller paths=./real/controller/... output:rbac:dir=config/rbac
generate:
	$$(hack/tools/build.sh) $(CONTROLLER_GEN_ARGS)
	$$(hack/tools/build.sh) $(CONTROLLER_GEN_RBAC_ARGS)

# servelab's container image without Docker: the static binary in one layer, user 65532,
# ENTRYPOINT ["servelab"], as an OCI archive (docker load / podman load / kind load
# image-archive / ctr images import). With Docker: docker build -t $(IMAGE) . (Dockerfile).
IMAGE ?= servelab:latest
image:
	CGO_ENABLED=0 GOOS=linux $(GO) build -tags nocuda -ldflags "-s -w" -o bin/image/servelab ./cmd/servelab
	$(GO) run ./hack/image --binary bin/image/servelab --out bin/servelab-image.tar --tag $(IMAGE)

# The Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# and controller-gen, built from Go modules into ~/.cache/servelab when absent; NVRTC
# (Debian's libnvrtc11.2, non-free) for cuda/kernels' generator and its CI check.
tools:
	hack/k8s/build.sh
	hack/tools/build.sh
	scripts/install-nvrtc.sh >/dev/null

clean:
	rm -rf bin
