# Two commands do all set-up on a fresh machine (Python 3.10+ and pip needed):
#   make run    the whole loop locally: tiny model, local store, simulated rater
#   make test   every test (the kind end-to-end test only where Docker exists)
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test e2e-kind crd

venv: $(STAMP)

$(STAMP): pyproject.toml images/ml-stack.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -c images/ml-stack.txt -e '.[all]'
	touch $(STAMP)

run: venv
	$(BIN)/therapy-rlhf run examples/tiny-local.yaml --rater auto

test: venv
	$(BIN)/python -m pytest tests -q -ra -p no:randomly

e2e-kind: venv
	PATH="$(abspath $(BIN)):$$PATH" bash tests/e2e/run-kind.sh

crd: venv
	$(BIN)/therapy-rlhf crd --output crds/therapyrlhfrun.yaml
	cp crds/therapyrlhfrun.yaml charts/therapy-rlhf/files/therapyrlhfrun.yaml  # the chart ships a copy
