# The README's two commands: `make run` (train the demo model if needed, serve it) and
# `make test` (lint + the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCKS  := requirements
# torch first, at the locked version: the CPU build on these machines (pip's configured
# wheel folder); the lock then finds it installed and pulls no multi-gigabyte CUDA build.
TORCH  ?= $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' $(LOCKS)/dev.txt)

.PHONY: setup lock run test lint format browser bench bench-classify bench-embed bench-generate peers peers-lock clean

setup: $(VENV)/.installed

# The virtualenv holds exactly the locked versions: the project itself adds none (--no-deps).
$(VENV)/.installed: pyproject.toml Makefile $(LOCKS)/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -r $(LOCKS)/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# The lock: exact versions from pyproject.toml's ranges, resolved for the images' platform
# (Linux x86_64, Python 3.11). dev.txt (every extra) first; each image's list is the subset
# it needs, constrained to dev.txt, so every image runs the versions the tests ran with:
# serve.txt and torch-cuda.txt + train.txt for the Modal images (functions/images.py),
# runpod-<handler>.txt for each RunPod worker image (handlers/Dockerfile).
# Existing pins are kept unless a range excludes them: `make lock UPGRADE=--upgrade` moves on.
COMPILE = $(BIN)/uv pip compile -q $(UPGRADE) --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock'
CPU_ONLY = --excludes $(LOCKS)/cuda-runtime.in
lock: setup
	$(COMPILE) pyproject.toml --all-extras -c $(LOCKS)/constraints.in $(CPU_ONLY) -o $(LOCKS)/dev.txt
	$(COMPILE) pyproject.toml --extra openvino -c $(LOCKS)/dev.txt -o $(LOCKS)/serve.txt
	$(COMPILE) pyproject.toml --extra train --extra tabular -c $(LOCKS)/dev.txt $(CPU_ONLY) \
		-o $(LOCKS)/train.txt
	$(COMPILE) pyproject.toml --extra runpod --extra openvino -c $(LOCKS)/dev.txt \
		-o $(LOCKS)/runpod-classify.txt
	$(COMPILE) pyproject.toml --extra runpod --extra openvino -c $(LOCKS)/dev.txt \
		-o $(LOCKS)/runpod-embed.txt
	$(COMPILE) pyproject.toml --extra runpod -c $(LOCKS)/dev.txt -o $(LOCKS)/runpod-predict.txt
	$(COMPILE) pyproject.toml --extra train --extra tabular --extra runpod -c $(LOCKS)/dev.txt \
		$(CPU_ONLY) -o $(LOCKS)/runpod-train_classifier.txt
	$(COMPILE) pyproject.toml --extra train --extra tabular --extra runpod -c $(LOCKS)/dev.txt \
		$(CPU_ONLY) -o $(LOCKS)/runpod-train_tabular.txt
	$(COMPILE) pyproject.toml --extra train --extra qlora --extra runpod -c $(LOCKS)/dev.txt \
		$(CPU_ONLY) -o $(LOCKS)/runpod-finetune_lora.txt
	$(COMPILE) $(LOCKS)/torch-cuda.in -c $(LOCKS)/dev.txt -o $(LOCKS)/torch-cuda.txt
	# The generate task's GPU serving images (Modal's vllm_image, the RunPod generate worker):
	# vLLM pins its own torch, transformers and CUDA runtime, so these are resolved with the
	# core dependencies but not constrained to dev.txt (tests/unit/test_lock.py: VLLM_LOCKS).
	$(COMPILE) $(LOCKS)/vllm.in pyproject.toml -o $(LOCKS)/vllm.txt
	$(COMPILE) $(LOCKS)/vllm.in pyproject.toml --extra runpod -c $(LOCKS)/vllm.txt \
		-o $(LOCKS)/runpod-generate.txt

run: setup
	$(BIN)/fnbundle demo

# Three workers (pytest-xdist) on two cores: half the suite waits on servers, subprocesses
# and sleeps, so a third worker fills the cores while the others wait (on 2 cores: pytest
# 11 min 42 s against 13 min 29 s with two workers, both cores busy 93% of the time). Slow
# tests go first (tests/conftest.py); a module runs on one worker (loadscope, in collection
# order: xdist would put the biggest modules first), so what it builds once (the demo
# training, the image check's virtualenvs) is built once. With more than one worker, each
# one's torch and ONNX Runtime (and the servers and training workers it starts) use one
# thread (tests/conftest.py): no worker thrashes another's.
PYTEST_WORKERS ?= 3
test: setup lint browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The playground's browser tests (tests/e2e/test_playground.py) drive Debian's chromium with
# Playwright, whose own browser download cannot reach its host here: apt installs it once.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The whole comparison in one command: the peers installed (once), then classification
# (the gateway against B1, B2, LitServe and BentoML) and embeddings (against E1, E2,
# infinity-emb, fastembed and sentence-transformers' ONNX backend), each report with its
# targets per round (docs/BENCHMARKS.md). `bench-classify` and `bench-embed` run one.
bench: bench-classify bench-embed

bench-classify: setup peers
	$(BIN)/python loadtests/bench_classify.py

bench-embed: setup peers
	$(BIN)/python loadtests/bench_embed.py

bench-generate: setup
	$(BIN)/python loadtests/bench_generate.py

# The peer servers the benchmarks compare with, each in its own virtualenv .peers/<name>
# (their pins conflict with ours and with each other's), installed from its pinned list
# loadtests/peers/<name>.txt; torch first where the list needs it, from pip's configured
# local CPU wheel. `make bench` installs them first; the benchmarks use every peer installed.
PEERS ?= litserve bentoml infinity fastembed st-onnx
peers: $(PEERS:%=.peers/%/.installed)

.peers/%/.installed: loadtests/peers/%.txt
	rm -rf .peers/$*
	$(PYTHON) -m venv .peers/$*
	.peers/$*/bin/python -m pip install -q --upgrade pip
	if grep -q '^torch==' $<; then .peers/$*/bin/python -m pip install -q \
		"$$(sed -n 's/^\(torch==[^ ;+]*\).*/\1/p' $<)"; fi
	.peers/$*/bin/python -m pip install -q -r $<
	touch $@

# The pinned lists: each peer's top-level requirements (loadtests/peers/<name>.in) installed
# into a fresh virtualenv, then every installed version written down.
peers-lock:
	for p in $(PEERS); do \
		rm -rf .peers/lock-$$p && $(PYTHON) -m venv .peers/lock-$$p && \
		.peers/lock-$$p/bin/python -m pip install -q --upgrade pip && \
		if grep -q '^torch==' loadtests/peers/$$p.in; then .peers/lock-$$p/bin/python -m pip \
			install -q "$$(grep '^torch==' loadtests/peers/$$p.in)"; fi && \
		.peers/lock-$$p/bin/python -m pip install -q -r loadtests/peers/$$p.in && \
		{ echo "# Generated by \`make peers-lock\` from loadtests/peers/$$p.in."; \
		  .peers/lock-$$p/bin/python -m pip freeze --all --exclude pip --exclude setuptools; \
		} > loadtests/peers/$$p.txt && rm -rf .peers/lock-$$p || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
