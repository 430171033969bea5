# The two commands of the README: `make test` and `make demo`. Both set up .venv when it is missing
# (pinned dev requirements), build and install clipfast with its extension, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# The CUDA build needs the toolkit root explicitly and, without a GPU, the archs.
export CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export MAX_JOBS ?= 2
# Keep BLAS threads to the cores we have.
export OMP_NUM_THREADS ?= $(shell nproc)

.PHONY: setup build test lint demo bench bench-quick gpu-check gpu-check-dry-run aot-report cmake-check clean

setup: $(VENV)/.deps
build: $(VENV)/.built

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml csrc/sources.cmake $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

test: build
	TRITON_INTERPRET=1 $(VENV)/bin/pytest tests -q --durations=15

# ruff (rules and line length in pyproject.toml); .ci/run runs it.
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .

# Train a tiny CLIP (demo-vit: 32x32 ViT, quick_gelu through clipfast._C) on the built-in shapes data for
# 10 epochs (2000 steps of 128) on CPU, zero-shot evaluation after each epoch: of 4 colour x shape classes never
# trained on (val/unseen_class_zeroshot_top1) and of held-out attribute combinations; a few minutes on 2 cores.
# Writes logs/demo-<time>/{checkpoints,metrics.jsonl,plots/*.png,summary.json}.
DEMO_FLAGS ?= --model demo-vit --dataset-type shapes --train-num-samples 25600 --val-num-samples 1000 \
	--batch-size 128 --epochs 10 --lr 2e-3 --warmup 50 --wd 0.1 --keep-last 1 --log-every-n-steps 50 \
	--logs logs --name demo-$(shell date +%Y%m%d-%H%M%S)

# DEMO_EXTRA adds flags, e.g. `make demo DEMO_EXTRA=--bf16-weights` (clipfast.optim: bf16 weights with
# stochastic rounding + bf16 Adam state, 6 B/param).
DEMO_EXTRA ?=

demo: build
	$(PY) -m clipfast.info
	$(VENV)/bin/clipfast train $(DEMO_FLAGS) $(DEMO_EXTRA)

bench: build
	$(VENV)/bin/pytest bench --benchmark-only

# clipfast bench --quick: a few minutes on CPU; JSON, Markdown report and PNGs under $(BENCH_OUT).
BENCH_OUT ?= bench-report
bench-quick: build
	$(VENV)/bin/clipfast bench --quick --out $(BENCH_OUT)

# make gpu-check, on a machine with one CUDA GPU (<= 8 min with the venv in place): builds clipfast._C for that
# GPU's arch, runs every gpu-marked and CUDA-parametrised test on it (real Triton, no interpreter), then the
# GPU-sized bench subset (clipfast bench --subset gpu-check: attention vs SDPA where bench_attention*.py exists,
# the loss up to N = 32768 vs OpenCLIP, QuickGELU, AdamW, a ViT-B/32 train step). Everything lands in
# $(GPU_CHECK_OUT): tests.xml + tests.log, bench/{results.json,report.md,*.png}. Without a GPU: one line, exit 2.
# `make gpu-check-dry-run` runs both stages' commands here on CPU: the tests collected only, the bench subset at
# CPU shapes.
GPU_CHECK_OUT ?= gpu-check-$(shell date +%Y%m%d-%H%M%S)
GPU_TESTS = CLIPFAST_TEST_NO_INTERPRET=1 $(VENV)/bin/pytest tests -k "gpu or cuda" -p no:cacheprovider -q
GPU_BENCH = $(VENV)/bin/clipfast bench --subset gpu-check

gpu-check:
	$(if $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null),,$(error gpu-check: no CUDA GPU here (nvidia-smi finds none), nothing checked; run it on a machine with one))
	$(MAKE) setup
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || \
		{ echo "make gpu-check: nvidia-smi sees a GPU but torch.cuda.is_available() is False (driver vs torch CUDA $$($(PY) -c 'import torch; print(torch.version.cuda)'))."; exit 1; }
	mkdir -p $(GPU_CHECK_OUT)
	TORCH_CUDA_ARCH_LIST=$$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1) MAX_JOBS=$$(nproc) \
		$(PIP) install --quiet --no-build-isolation --no-deps -e . 2>&1 | tee $(GPU_CHECK_OUT)/build.log
	$(PY) -m clipfast.info | tee $(GPU_CHECK_OUT)/info.txt
	$(GPU_TESTS) --junitxml=$(GPU_CHECK_OUT)/tests.xml 2>&1 | tee $(GPU_CHECK_OUT)/tests.log; \
		status=$${PIPESTATUS[0]}; $(GPU_BENCH) --out $(GPU_CHECK_OUT)/bench; bench=$$?; \
		echo "gpu-check: tests exit $$status, bench exit $$bench; everything in $(GPU_CHECK_OUT)"; \
		test $$status -eq 0 -a $$bench -eq 0

gpu-check-dry-run: build
	$(GPU_TESTS) --collect-only
	$(GPU_BENCH) --out $(GPU_CHECK_OUT)-dry-run

# Resources (registers, shared, spills) of every Triton kernel config, compiled for sm_80 and sm_90.
aot-report: build
	$(PY) -m clipfast.kernels._aot

# Configure and build clipfast._C with CMake from the same source list as setup.py (CPU kernels;
# CLIPFAST_CMAKE_CUDA=ON adds the CUDA ones, ~5 min more here). A CUDA build of torch makes its CMake
# config look for the toolkit and nvrtc, which ship in the nvidia-* wheels: pass both.
cmake-check: build
	$(VENV)/bin/cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(PY) \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME) \
		-DCUDA_nvrtc_LIBRARY="$$($(PY) -c 'import glob, os, torch; print((glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "lib", "libnvrtc.so*")) + [""])[0])')" \
		-DCLIPFAST_WITH_CUDA=$${CLIPFAST_CMAKE_CUDA:-OFF}
	$(VENV)/bin/cmake --build build/cmake -j $(MAX_JOBS)

clean:
	rm -rf build *.egg-info clipfast/*.so
