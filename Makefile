# `make demo`: set up (venv + install) and run the main job. `make test`: set up and run the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of torch; an unpinned torch would pull several GB of CUDA wheels.
TORCH   := torch==2.13.0

.PHONY: demo test install clean pretrain

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/visalign train geneval-s-nft --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

pretrain: $(STAMP)
	$(BIN)/visalign pretrain shapes-flow-pretrain --out runs/pretrain-shapes-flow

clean:
	rm -rf $(VENV) runs .pytest_cache
