# smsgw: the two commands a newcomer runs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@chmod go-rwx conf/demo.toml  # it holds password hashes: the daemon warns if others can read it
	$(BIN)/smsgw run --config conf/demo.toml

lint: $(STAMP)
	$(BIN)/ruff check gateway routing smpp rules tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_codec.py
	$(BIN)/python bench/bench_logs.py
	$(BIN)/python bench/bench_e2e.py
	$(BIN)/python bench/bench_bindflood.py
	$(BIN)/python bench/bench_idle.py
	$(BIN)/python bench/compare.py --no-install

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var
