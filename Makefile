# make demo  -> create .venv, install, run the offline demo
# make test  -> create .venv, install, run the test suite (offline)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test recipe lint clean browser ocr

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

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
	$(BIN)/python -m pytest -m "not gpu and not slow" -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs data .pytest_cache
