# Two commands (see README): `make demo` runs the pipeline (Step 1 -> Step 3) on the embedded local inventory,
# `make test` runs every quality gate. Both set up what they need first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test system-deps lint ansible-test-units
setup: $(STAMP)

$(STAMP): requirements.txt workers/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -e ./workers
	touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" ansible-playbook playbooks/pipeline.yml

system-deps:
	scripts/install-system-deps.sh

test: setup system-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/run-tests.sh

# The plugin tests (tests/unit/plugins) under `ansible-test units`; `make test` runs them through pytest.
ansible-test-units: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/ansible-test.sh units
