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
	$(BIN)/visalign eval --model builtin:shapes-flow --per-category 50 --seed 0 --out runs/demo/eval.json
	$(BIN)/visalign sample --model builtin:shapes-flow --prompt "a red circle and a blue square" \
		--prompt "three stars" --prompt "a triangle left of a circle" --n 8 --out runs/demo/grid.png
	@echo "report: runs/demo/eval.json"

test: $(STAMP)
	$(BIN)/python -m pytest tests

pretrain: $(STAMP)
	$(BIN)/visalign pretrain shapes-flow-pretrain --out runs/pretrain-shapes-flow

clean:
	rm -rf $(VENV) runs .pytest_cache
