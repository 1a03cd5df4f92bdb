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

##@ Images

IMAGE_TAG ?= dev
export IMAGE_TAG
# images/<name>.Dockerfile -> clawdbot/<name>:$(IMAGE_TAG) (runtime-cpu: clawdbot/runtime-onnx);
# the GPU variants are large.
IMAGES ?= operator sidecar runtime-cpu
# The real-node e2e suite's test image (the openai client, the cloud stand-in).
E2E_IMAGES ?= e2e/images/testkit.Dockerfile
# Where the images are written as OCI archives for the real node's containerd.
IMAGE_EXPORT_DIR ?= $(CURDIR)/.cache/containers/export
export CLAWDBOT_IMAGE_EXPORT_DIR := $(IMAGE_EXPORT_DIR)
# vllm-cpu builds vLLM from source (see images/README.md): where its git sources and
# PyTorch's CPU wheel index are, e.g. your mirrors of them.
VLLM_REPOSITORY ?=
TORCH_INDEX_URL ?=
# The real node (containerd, kubelet, kube-proxy) in `make e2e`, and so the images built
# first: on by default as root where buildah, mmdebstrap and containerd are installed (.ci/run
# installs them); CLAWDBOT_REAL_NODE=0 turns it off, =1 insists (a missing node fails).
CLAWDBOT_REAL_NODE ?= $(shell [ "$$(id -u)" = 0 ] && command -v buildah >/dev/null && \
	command -v mmdebstrap >/dev/null && command -v containerd >/dev/null && echo 1 || echo 0)

.PHONY: images
images: ## Build the images with buildah, no Docker daemon (IMAGES="operator sidecar runtime-cpu"); local Debian base.
	@if [ "$(IMAGES)" = vllm-cpu ]; then \
		images/build.sh --build-arg VLLM_REPOSITORY=$(VLLM_REPOSITORY) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) vllm-cpu; \
	else images/build.sh $(IMAGES); fi
	@images/build.sh --sizes

.PHONY: images-e2e
images-e2e: ## Build the images and the e2e test image, and export them for the real node.
	images/build.sh --export $(IMAGE_EXPORT_DIR) $(IMAGES) $(E2E_IMAGES)
	@images/build.sh --sizes

.PHONY: clean-images
clean-images: ## Delete the image store (.cache/containers: base images, layers, build cache).
	-buildah --root $(CURDIR)/.cache/containers/storage --runroot $(CURDIR)/.cache/containers/run \
		--storage-driver overlay rm --all >/dev/null 2>&1
	rm -rf .cache/containers

##@ End-to-end tests

.PHONY: e2e
e2e: venv cluster-build ## E2E suite on its own local control plane (starts and stops it), with the real node as root (CLAWDBOT_REAL_NODE).
	@# Its own state (.run/e2e-cluster), apart from the plane `make demo` and `make
	@# cluster-up` run: the suite starts from an empty etcd whatever a demo left running.
	@# With the real node, the images are built first (cached layers: seconds when unchanged).
	@if [ "$(CLAWDBOT_REAL_NODE)" = 1 ]; then $(MAKE) --no-print-directory images-e2e; fi
	CLAWDBOT_REAL_NODE=$(CLAWDBOT_REAL_NODE) CLAWDBOT_CLUSTER_DIR=$(CURDIR)/.run/e2e-cluster \
		$(BIN)/pytest e2e -m e2e -q --cluster=local $(E2E_ARGS)

FAULTS_TABLE ?= $(CURDIR)/.run/faults.md

.PHONY: faults
faults: venv cluster-build ## Fault-injection suite alone (e2e/tests/test_faults.py); writes the table to .run/faults.md and prints it.
	@rm -f $(FAULTS_TABLE)
	@status=0; CLAWDBOT_CLUSTER_DIR=$(CURDIR)/.run/e2e-cluster CLAWDBOT_FAULTS_TABLE=$(FAULTS_TABLE) \
		$(BIN)/pytest e2e/tests/test_faults.py -m e2e -q --cluster=local $(E2E_ARGS) || status=$$?; \
		if [ -f $(FAULTS_TABLE) ]; then echo; echo "==> $(FAULTS_TABLE:$(CURDIR)/%=%)"; cat $(FAULTS_TABLE); fi; \
		exit $$status

.PHONY: e2e-kind
e2e-kind: venv ## E2E suite on a kind cluster with the images built here (needs kind and Docker or podman).
	@command -v kind >/dev/null || { echo "make e2e-kind needs kind (https://kind.sigs.k8s.io); 'make e2e' runs the same suite here"; exit 1; }
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || command -v podman >/dev/null || \
		{ echo "make e2e-kind needs a Docker daemon or podman (KIND_EXPERIMENTAL_PROVIDER=podman)"; exit 1; }
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || \
		kind create cluster --name $(KIND_CLUSTER) --config e2e/cluster/kind-config.yaml --wait 180s
	$(MAKE) images-e2e
	for archive in $(IMAGE_EXPORT_DIR)/*.tar; do kind load image-archive --name $(KIND_CLUSTER) $$archive; done
	$(BIN)/pytest e2e -m e2e -q --cluster=kind $(E2E_ARGS)
