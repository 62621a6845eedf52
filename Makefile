# Set-up and everyday commands. `make demo` and `make test` each start from a
# fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STACK ?= stacks/local-demo.yaml
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo demo-destroy slurm-demo test test-fast schema slurm-up slurm-down clean

$(BIN)/ubench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo,kubernetes]'
	touch $@

install: $(BIN)/ubench

## Apply the demo stack on this machine and print its status and outputs.
demo: install
	ubench apply $(STACK) --auto-approve
	ubench status $(STACK)
	ubench output -s $(STACK)

demo-destroy: install
	ubench destroy $(STACK) --auto-approve

## Apply stacks/slurm-demo.yaml on a throwaway 3-node Slurm on this machine.
slurm-demo: install
	scripts/install-system-deps
	scripts/make-busybox-image /tmp/ubench-images/busybox
	out="$$(scripts/local-slurm up 3)" && eval "$$out" && \
	  ubench apply stacks/slurm-demo.yaml --auto-approve && \
	  ubench status stacks/slurm-demo.yaml

## Lint, type-check and run every test; Slurm tests start a throwaway cluster.
test: install
	scripts/install-system-deps
	ruff check ubench_iac tests
	ruff format --check ubench_iac tests
	mypy
	scripts/run-tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slurm and not slow"

schema: install
	ubench schema --output-dir schemas

slurm-up:
	scripts/local-slurm up 3

slurm-down:
	scripts/local-slurm down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
