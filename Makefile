# Two commands: `make run` (set-up + a short training run on the bundled synthetic chat data)
# and `make test` (set-up + the whole test suite). Everything else is a helper for those.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alpha-installed
TORCH_CPU := torch==2.13.0
RUN_DATA := data/synth-chat.txt
# test processes (pytest-xdist); most tests wait on a subprocess's start, so two halve a 2-core run
TEST_WORKERS ?= 2

.PHONY: setup run test lint bench clean

# A machine whose system Python already has a CUDA torch (a GPU image) keeps it: the venv then
# sees the system packages. Elsewhere torch is installed first, pinned to the CPU wheel, so no
# dependency range can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	    echo "using the system's CUDA torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

$(RUN_DATA): | $(STAMP)
	$(BIN)/alpha data synth --out $(RUN_DATA)

run: setup $(RUN_DATA)
	$(BIN)/alpha train --data $(RUN_DATA) --domain chat --iters 600 --batch 16 --block 128 \
	  --dim 128 --heads 4 --layers 4 --vocab-size 1024 --lr 2e-3 --warmup 60 --dropout 0.0 \
	  --eval-interval 100 --sample-interval 200 --checkpoint-interval 200

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: setup
	$(BIN)/ruff check alpha tests scripts
	$(BIN)/ruff format --check alpha tests scripts

bench: setup
	$(BIN)/alpha bench --tiny --device cpu --baseline

clean:
	rm -rf $(VENV) .pytest_cache
