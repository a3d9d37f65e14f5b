# `make demo`: set up (venv + install) and run the main job. `make test`: set up and run the tests (`make test-fast`:
# the unit and policy tests only, under 3 minutes).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of torch; an unpinned torch would pull several GB of CUDA wheels.
TORCH   := torch==2.13.0

.PHONY: demo test test-fast install clean pretrain tesseract docs

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/visalign train geneval-s-ar-grpo --out runs/demo

# The `ocr` reward runs tesseract (Debian package tesseract-ocr: its library; the tests also run its command):
# installed when missing and apt-get can run (root, or sudo without a password); otherwise a one-line note, and
# the OCR tests skip saying why.
tesseract:
	@command -v tesseract >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y -q tesseract-ocr >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q tesseract-ocr >/dev/null; }; \
	  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then sudo apt-get install -y -q tesseract-ocr >/dev/null || { sudo apt-get update -q >/dev/null && sudo apt-get install -y -q tesseract-ocr >/dev/null; }; \
	  else echo "note: tesseract is missing: install the package tesseract-ocr (Debian/Ubuntu: apt-get install tesseract-ocr) for the ocr reward; its tests will skip"; fi; }

# The tests run on TEST_WORKERS pytest-xdist workers, each on 1 torch thread (tests/conftest.py): 2 = the 2 cores.
TEST_WORKERS ?= 2
test: $(STAMP) tesseract
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS)

# The fast tier (under 3 minutes on 2 cores): unit tests and policy invariants, without the integration tests
# (commands, training runs) and the slow ones; markers from tests/conftest.py.
test-fast: $(STAMP) tesseract
	$(BIN)/python -m pytest tests -m "not integration and not slow" -n $(TEST_WORKERS)

pretrain: $(STAMP)
	$(BIN)/visalign pretrain shapes-flow-pretrain --out runs/pretrain-shapes-flow

# The documentation site (mkdocs.yml): the reference pages regenerated from the code, then `mkdocs build --strict`
# into site/. mkdocs-material comes from the `docs` extra of pyproject.toml, installed into the venv when missing
# (make test does not need it).
docs: $(STAMP)
	$(BIN)/python -c "import material, mkdocs" 2>/dev/null || $(BIN)/pip install -q -e '.[docs]'
	$(BIN)/python docs/gen_reference.py
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache site
