# covidscan: `make run` starts the whole stack on this machine, `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-integration lint migrate bench clean openapi conformance docs screenshots

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devtools.devstack

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Lint, format and types: ruff and mypy, configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests that talk to Redis, a Celery worker and the database (DATABASE_URL picks it).
test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration

migrate: $(STAMP)
	$(BIN)/covidscan migrate

clean:
	rm -rf var site .pytest_cache .mypy_cache .ruff_cache

# Throughput numbers from one run of the real stack (prints them; JSON in var/bench.json, and the
# run saved in bench/results/ for the docs' performance page), then the S3 blob store against the
# folder store (var/bench-blob-stores.json).
bench: $(STAMP)
	$(BIN)/python -m bench --save-results
	$(BIN)/python -m bench.blob_stores

# The committed copy of the API's OpenAPI document (tests/test_openapi.py fails when it drifts).
openapi: $(STAMP)
	$(BIN)/covidscan openapi > docs/openapi.json.tmp && mv docs/openapi.json.tmp docs/openapi.json

# The committed DICOM Conformance Statement (tests/test_conformance.py fails when it drifts).
conformance: $(STAMP)
	$(BIN)/covidscan conformance > docs/conformance.md.tmp && mv docs/conformance.md.tmp docs/conformance.md

# The documentation site (mkdocs.yml, docs/) into site/, in strict mode: a broken link or anchor,
# or a page missing from the navigation, fails. The configuration table and the performance
# tables are made from the code and bench/results/ as it builds (docs/hooks.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The pictures of the pages in docs/images/, taken by the browser tests in headless Chromium
# (commit them when the pages change).
screenshots: $(STAMP)
	DOCS_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/test_web_browser.py \
		-k 'upload_watch_filter or heatmap_is_asked or strip_chart'
