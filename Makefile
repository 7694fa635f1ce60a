# The two commands: `make demo` (the main job) and `make test` (everything the CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Processes running the test suite (`make test TEST_WORKERS=1` runs it in one). Four on a 2-core machine: most
# tests wait on processes and watches, not on the CPU (docs/benchmarks.md, "The test suite").
TEST_WORKERS ?= 4

# Feldera's toolchain, built by hand outside this project (this project builds none of Feldera's code): the
# SQL compiler jar, a Java runtime and pipeline binaries. The feldera tests need it.
FELDERA_TOOLCHAIN ?= $(HOME)/.cache/pipeline-operator/feldera/0.306.0-c44a2456a

.PHONY: test check test-feldera demo image lock crd lint-imports clean

# Install the project and its test extra into a local virtualenv, build or reuse the
# control-plane binaries, promtool and Feldera's fda (cached under ~/.cache/pipeline-operator, with progress), run the static
# checks (ruff, mypy, import-linter: any finding fails the run), then pytest.
test: $(VENV)/.installed
	@echo "==> ruff: lint operator, tests, bench and image"
	$(BIN)/ruff check operator tests bench image
	@echo "==> mypy: type check pipeline_operator (strict on core/ and models/; config in pyproject.toml)"
	$(BIN)/mypy
	@echo "==> import-linter: layering contracts (pyproject.toml)"
	$(BIN)/lint-imports
	$(BIN)/pipeline-operator control-plane fetch
	$(BIN)/python -m pipeline_operator_dev.promtool
	$(BIN)/python -m pipeline_operator_dev.fda
	$(BIN)/pipeline-operator crd --check --output crds/pipelines.dataflow.dev.yaml
	$(BIN)/pipeline-operator crd --check --output deploy/base/crd/pipelines.dataflow.dev.yaml
	@if [ -f "$(FELDERA_TOOLCHAIN)/sql2dbsp-jar-with-dependencies.jar" ]; then \
	  echo "==> Feldera's toolchain found in $(FELDERA_TOOLCHAIN): the feldera tests (real pipelines) run"; \
	else \
	  echo "==> SKIPPED: the feldera tests (tests/test_feldera_engine.py): Feldera's toolchain is not in $(FELDERA_TOOLCHAIN)"; \
	fi
	@# pytest exits 5 when it collected no tests: this project always has tests, so that is a failure.
	@# The suite runs in $(TEST_WORKERS) processes (pytest-xdist), each with its own control plane, one
	@# test file at a time (--dist loadfile): most tests wait on processes and watches, not on the CPU.
	@# The files go out in the order tests/conftest.py gives them (the longest first): xdist would otherwise
	@# reorder them by their number of tests, leaving the longest single tests (the API's fuzzing) for last.
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run" >&2; exit 1; fi; exit $$rc

# The inner loop, in about a minute: the static checks and the tests that start no process of the test
# environment (no control plane, PostgreSQL, operator or image: `-m "not integration"`, tests/conftest.py).
check: $(VENV)/.installed
	$(BIN)/ruff check operator tests bench image
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 -m "not integration" -q $(PYTEST_ARGS)

# Only the tests that run Feldera's own SQL compiler and pipeline binaries (skipped, saying why, without them).
test-feldera: $(VENV)/.installed
	FELDERA_TOOLCHAIN=$(FELDERA_TOOLCHAIN) $(BIN)/pytest -m feldera tests/test_feldera_engine.py $(PYTEST_ARGS)

# The main job in one command: an embedded control plane (unless KUBECONFIG is set), the CRD,
# the operator and a sample Pipeline going to Running, with its monitor events; Ctrl-C to stop.
demo: $(VENV)/.installed
	$(BIN)/pipeline-operator demo $(DEMO_ARGS)

# The operator's image without Docker (image/build_image.py): dist/image/pipeline-operator-VERSION.tar
# (docker-archive: docker load, podman load, kind load image-archive, skopeo copy), dist/image/oci/
# (OCI layout) and the SBOM beside them. As root it installs mmdebstrap, umoci and skopeo with apt-get.
IMAGE ?= localhost/pipeline-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image: $(VENV)/.installed
	$(BIN)/python image/build_image.py --image $(IMAGE) $(IMAGE_ARGS)

# Re-pin the image's dependencies (image/requirements.txt, with hashes, from pyproject.toml) and its pip.
UV := uv==0.13.8
lock: $(VENV)/.installed
	$(BIN)/pip install --quiet $(UV)
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line \
	  --custom-compile-command "make lock" -o image/requirements.txt
	$(BIN)/uv pip compile image/pip.in --generate-hashes --python-version 3.11 --no-header \
	  --custom-compile-command "make lock" -o image/pip.txt

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
