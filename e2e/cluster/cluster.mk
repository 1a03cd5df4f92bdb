# The local control plane and the e2e suite; included by the main Makefile.

K8S_VERSION ?= v1.36.3
ETCD_VERSION ?= v3.6.16
KWOK_VERSION ?= v0.8.0
HELM_VERSION ?= v3.22.0
KIND_CLUSTER ?= clawdbot-e2e
# Binaries built from the Go module proxy, cached per Kubernetes version; `make clean-cache`
# drops them. Cluster state (certificates, etcd data, logs) lives in .run/cluster.
CLUSTER_BIN_DIR ?= $(CURDIR)/.cache/bin/$(K8S_VERSION)
export K8S_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION KIND_CLUSTER
export CLAWDBOT_BIN_DIR := $(CLUSTER_BIN_DIR)
export CLAWDBOT_BUILD_DIR := $(CURDIR)/.cache/build
E2E_ARGS ?=

##@ Local cluster

.PHONY: cluster-build
cluster-build: ## Build (once, cached) etcd, the Kubernetes control plane, kubectl, kwok and helm.
	@e2e/cluster/build.sh

.PHONY: cluster-up
cluster-up: cluster-build ## Start the local control plane with fake GPU/CPU nodes (kwok).
	@e2e/cluster/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop every process of the local control plane.
	@e2e/cluster/cluster.sh down

.PHONY: cluster-status
cluster-status: ## Show the local control plane's processes and nodes.
	@e2e/cluster/cluster.sh status

.PHONY: clean-cache
clean-cache: ## Delete the cached binaries (the next cluster-build rebuilds them).
	rm -rf .cache/bin .cache/build

##@ Images (need Docker; not built in this project's CI)

IMAGE_TAG ?= dev
# images/<name>.Dockerfile -> clawdbot/<name>:$(IMAGE_TAG); the GPU variants are large.
IMAGES ?= operator sidecar runtime-cpu
# vllm-cpu builds vLLM from source (see images/README.md): where its git sources and
# PyTorch's CPU wheel index are, e.g. your mirrors of them.
VLLM_REPOSITORY ?=
TORCH_INDEX_URL ?=

.PHONY: images
images: ## Build the container images with Docker (IMAGES="operator sidecar runtime-cpu runtime-cuda runtime-rocm vllm-cpu").
	@command -v docker >/dev/null || { echo "make images needs Docker"; exit 1; }
	for image in $(IMAGES); do \
		args=""; \
		if [ "$$image" = vllm-cpu ]; then \
			args="--build-arg VLLM_REPOSITORY=$(VLLM_REPOSITORY) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)"; \
		fi; \
		docker build $$args -f images/$$image.Dockerfile -t clawdbot/$$image:$(IMAGE_TAG) . || exit 1; \
	done

##@ End-to-end tests

.PHONY: e2e
e2e: venv cluster-build ## E2E suite on its own local control plane (starts and stops it).
	@# Its own state (.run/e2e-cluster), apart from the plane `make demo` and `make
	@# cluster-up` run: the suite starts from an empty etcd whatever a demo left running.
	CLAWDBOT_CLUSTER_DIR=$(CURDIR)/.run/e2e-cluster $(BIN)/pytest e2e -m e2e -q --cluster=local $(E2E_ARGS)

FAULTS_TABLE ?= $(CURDIR)/.run/faults.md

.PHONY: faults
faults: venv cluster-build ## Fault-injection suite alone (e2e/tests/test_faults.py); writes the table to .run/faults.md and prints it.
	@rm -f $(FAULTS_TABLE)
	@status=0; CLAWDBOT_CLUSTER_DIR=$(CURDIR)/.run/e2e-cluster CLAWDBOT_FAULTS_TABLE=$(FAULTS_TABLE) \
		$(BIN)/pytest e2e/tests/test_faults.py -m e2e -q --cluster=local $(E2E_ARGS) || status=$$?; \
		if [ -f $(FAULTS_TABLE) ]; then echo; echo "==> $(FAULTS_TABLE:$(CURDIR)/%=%)"; cat $(FAULTS_TABLE); fi; \
		exit $$status

.PHONY: e2e-kind
e2e-kind: venv ## E2E suite on a kind cluster (needs Docker and kind).
	@command -v docker >/dev/null || { echo "make e2e-kind needs Docker; use 'make e2e'"; exit 1; }
	@command -v kind >/dev/null || { echo "make e2e-kind needs kind (https://kind.sigs.k8s.io)"; exit 1; }
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || \
		kind create cluster --name $(KIND_CLUSTER) --config e2e/cluster/kind-config.yaml --wait 180s
	$(MAKE) images
	for image in $(IMAGES); do kind load docker-image --name $(KIND_CLUSTER) clawdbot/$$image:$(IMAGE_TAG); done
	$(BIN)/pytest e2e -m e2e -q --cluster=kind $(E2E_ARGS)
