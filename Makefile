# Hyperforge: the two commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned to 2.13.0, the CPU wheel on this kind of machine's disk (a
# looser pin downloads a multi-GB CUDA build). open_clip_torch is installed
# without its dependencies: we only read its CLIP BPE vocabulary file, and its
# torchvision requirement would pull another torch.
OPEN_CLIP := open_clip_torch==3.3.0

.PHONY: install run test lint typecheck contracts pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(OPEN_CLIP)
	touch $(STAMP)

run: install
	$(BIN)/hyperforge local

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

contracts: install
	$(BIN)/lint-imports

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
pytest: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

test: lint typecheck contracts pytest

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
