# The two commands: `make demo` (the main job) and `make test` (everything the CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test demo crd lint-imports clean

# Install the project and its test extra into a local virtualenv, build or reuse the
# control-plane binaries (cached under ~/.cache/pipeline-operator, with progress), run the static
# checks (ruff, mypy, import-linter: any finding fails the run), then pytest.
test: $(VENV)/.installed
	@echo "==> ruff: lint operator, tests, bench and image"
	$(BIN)/ruff check operator tests bench image
	@echo "==> mypy: type check pipeline_operator (strict on core/ and models.py; config in pyproject.toml)"
	$(BIN)/mypy
	@echo "==> import-linter: layering contracts (pyproject.toml)"
	$(BIN)/lint-imports
	$(BIN)/pipeline-operator control-plane fetch
	$(BIN)/pipeline-operator crd --check --output crds/pipelines.dataflow.dev.yaml
	$(BIN)/pipeline-operator crd --check --output deploy/base/crd/pipelines.dataflow.dev.yaml
	@# pytest exits 5 when it collected no tests: this project always has tests, so that is a failure.
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run" >&2; exit 1; fi; exit $$rc

# The main job in one command: an embedded control plane (unless KUBECONFIG is set), the CRD,
# the operator and a sample Pipeline going to Running, with its monitor events; Ctrl-C to stop.
demo: $(VENV)/.installed
	$(BIN)/pipeline-operator demo $(DEMO_ARGS)

# The test extra includes the dev extra (pipeline_operator_dev: the control plane and the demo);
# the operator alone, as in the image, is `pip install .` and has neither.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

crd: $(VENV)/.installed
	$(BIN)/pipeline-operator crd --output crds/pipelines.dataflow.dev.yaml
	$(BIN)/pipeline-operator crd --output deploy/base/crd/pipelines.dataflow.dev.yaml
	$(BIN)/pipeline-operator crd --output charts/pipeline-operator/files/pipelines.dataflow.dev.yaml

lint-imports: $(VENV)/.installed
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
