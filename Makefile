# kiln's entry points. `make demo` runs kiln locally; `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
KILN_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kiln
export KILN_CACHE_DIR
# What setup installs (helm, moto) comes first for every target.
export PATH := $(KILN_CACHE_DIR)/tools/bin:$(KILN_CACHE_DIR)/venv/bin:$(PATH)

.PHONY: help setup testenv test lint fmt crds manifests build demo bench

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install what tests need: packer (Debian), moto (PyPI venv), helm and the control plane (Go-built).
	@hack/setup.sh

testenv: ## Build or find kube-apiserver, etcd, kube-controller-manager; print their directory.
	@hack/testenv.sh

crds: ## Regenerate crds/ and the chart's crds/ from the API types.
	$(CARGO) run --quiet -- crd --out-dir crds
	$(CARGO) run --quiet -- crd --out-dir charts/kiln/crds

manifests: setup ## Regenerate config/base/ from the chart's default rendering.
	hack/manifests.sh

build: ## Build the kiln binary (debug).
	$(CARGO) build

fmt: ## Format the code.
	$(CARGO) fmt --all

lint: ## rustfmt and clippy, warnings are errors.
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features -- -D warnings

demo: setup ## Run kiln locally: control plane, moto as EC2, the controller, sample builds. ARGS=--once exits after.
	export KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/testenv.sh)}"; \
	$(CARGO) run --quiet -- demo $(ARGS)

test: setup lint ## Install what is needed, then run every test on a real control plane.
	cd hack/argocd-health && go test ./...
	cd hack/kstatus && go test ./...
	export KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/testenv.sh)}"; \
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast

bench: setup ## Prune 2,000 AMIs against a sequential script at 0 and 80 ms (~10 min; BENCH_IMAGES, BENCH_LATENCY_MS, BENCH_REGIONS, BENCH_PACING=ec2); the same on Glance and the DigitalOcean stand-in (BENCH_CLOUDS, BENCH_PACING=digitalocean); then a cold controller over 1k/3k/10k ImageBuilds (~20 min; BENCH_SCALE).
	$(CARGO) bench --profile dev --bench prune
	$(CARGO) bench --profile dev --bench prune_clouds
	export KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/testenv.sh)}"; \
	$(CARGO) bench --profile dev --bench scale
