# awqd: `make run` serves the demo model on whatever hardware is here; `make test` runs the suite.
# `make lint` adds format, Dockerfile (hadolint) and proto (buf, fetched from npm) checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
CACHE_DIR ?= .cache/awqd
IMAGE ?= awqd:dev

.PHONY: install run test lint proto proto-check gpu-check engine-check multi-gpu-check warmup-check paged-check kernel-peers skinny-tune quality-check docker-build clean

install: $(STAMP)

# torch==2.13.0 resolves to the CPU build on machines without CUDA (a local file here, as in CI) and to
# PyPI's CUDA build elsewhere; it is installed first so nothing else pulls a different torch.
$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e clients/python -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/awqd serve --listen $(LISTEN) --cache-dir $(CACHE_DIR) --log-format console

test: install proto-check check-deploy
	$(BIN)/ruff check .
	$(BIN)/pytest -ra

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	cd proto && npx --yes @bufbuild/buf@1.75.0 lint

# The image and the Kubernetes manifests: hadolint, yamllint, and the full manifests against the oldest and newest
# Kubernetes this deployment supports (kubernetes-validate bundles the schemas: no network needed). The kustomize
# components are patches, not full objects; tests/deploy/test_deploy.py renders and validates them where kubectl exists.
DEPLOY_MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml))
DEPLOY_K8S_VERSIONS := 1.31.0 1.37.0

.PHONY: check-deploy
check-deploy: install
	$(BIN)/hadolint Dockerfile
	$(BIN)/yamllint --strict .yamllint deploy
	for version in $(DEPLOY_K8S_VERSIONS); do \
		$(BIN)/kubernetes-validate --strict --quiet --kubernetes-version $$version $(DEPLOY_MANIFESTS) || exit 1; \
	done

proto: install
	$(BIN)/python tools/protogen.py

proto-check: install
	$(BIN)/python tools/protogen.py --check

# On a GPU machine: discovery, kernel selection and 7B-shaped generation; results land in bench/out/.
gpu-check:
	bash bench/gpu_check.sh

# On a GPU machine: the decode engine against transformers' eager generate, in one process (under 5 minutes on an
# H200): single query, 1/8/32 concurrent streams, token equality; engine-check.{json,md} land in $(ENGINE_OUT).
ENGINE_OUT ?= bench/out/engine
engine-check:
	python3 bench/engine_check.py --out $(ENGINE_OUT)

# On a multi-GPU machine: a 7B-shaped model @all (one replica per GPU): boot and kernel decisions per GPU (shared
# measurement vs each GPU measuring), 32 x N streams against N x one GPU, one replica killed under load;
# multi-gpu-check.{json,md} land in $(MULTI_GPU_OUT). `--dry-run` checks the script on the CPU.
MULTI_GPU_OUT ?= bench/out/multi-gpu
multi-gpu-check:
	python3 bench/multi_gpu_check.py --out $(MULTI_GPU_OUT)

# On a GPU machine: boot-to-SERVING cold and warm with the warm-up's share, then 64 clients from the moment of
# SERVING (under 9 minutes on an H200); warmup-check.{json,md}, Describe and the daemon logs land in $(WARMUP_OUT).
WARMUP_OUT ?= bench/out/warmup
warmup-check:
	python3 bench/warmup_check.py --out $(WARMUP_OUT)

# On a GPU machine: the paged KV cache in one process: 64/128/256 concurrent streams (P=128, N=128, greedy), CUDA
# graph vs eager tokens at batch 1/16/32 (also eager vs eager, and with one deterministic kernel pinned), preemption
# by swap and by recompute on a cut cache against the unpreempted tokens; paged-check.{json,md} land in $(PAGED_OUT).
PAGED_OUT ?= bench/out/paged
paged-check:
	python3 bench/paged_check.py --out $(PAGED_OUT)

# On a GPU machine: the Benchmark RPC (kernel latency, single query) on a 7B-shaped model; files land in bench/out/
# and bench/bench_report.py turns them into bench/results/. Phony: bench/ is also a directory.
.PHONY: bench
bench:
	bash bench/bench.sh

# On a GPU machine: every kernel candidate (awqd's, AutoAWQ's, torch's int4, fbgemm-gpu-genai's, gemlite) on the
# fused Llama-2-7B layer in one run, with the daemon's choice per bucket and the 7B repack costs; files land in
# $(PEERS_OUT). Carry fbgemm-gpu-genai (the release built for that torch) and gemlite as wheels (GPU-MACHINE.md).
PEERS_OUT ?= bench/out/kernel-peers
kernel-peers:
	python3 bench/kernel_peers.py --out $(PEERS_OUT)

# On a GPU machine: awqd's skinny-batch kernel swept on the fused Llama-2-7B shapes at 1-128 tokens beside fp16
# cuBLAS, awqd's GEMV and GEMM and tinygemm (under 4 minutes on an H200); skinny-tune.{json,md} land in $(SKINNY_OUT).
SKINNY_OUT ?= bench/out/skinny-tune
skinny-tune:
	python3 bench/skinny_tune.py $(SKINNY_OUT)

# On a GPU machine: a 35M-parameter Llama trained on Python's stdlib sources, quantized by AutoAWQ, RTN and as
# compressed-tensors, its held-out perplexity per kernel through awqd's engine (about 7 minutes on an H200; carry
# the AutoAWQ wheels of GPU-MACHINE.md plus compressed-tensors and its pure-Python dependencies); quality.{json,md}
# land in $(QUALITY_OUT).
QUALITY_OUT ?= bench/out/quality
quality-check:
	python3 bench/train_tiny.py --out $(QUALITY_OUT)

# The image needs a Docker engine with the NVIDIA runtime; none runs on the development machines.
docker-build:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
