# smsgw: the two commands a newcomer runs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest pg-server cluster-db cluster-db-stop run-cluster bench clean

# PostgreSQL's server binaries (tests/pgserver.py looks in the same places): Debian's, else
# pg_config's, else PATH. Installed with apt-get when missing (as root directly, else sudo).
PG_FOUND := ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
	|| { command -v pg_config >/dev/null && test -x "$$(pg_config --bindir)/postgres"; } \
	|| command -v postgres >/dev/null

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

pytest: $(STAMP) pg-server
	$(BIN)/pytest -q

# Quiet when the binaries are there. Debian's package also makes and starts its own cluster on
# port 5432; the tests and the demo run their own servers and do not use it.
pg-server:
	@if ! { $(PG_FOUND); }; then \
		echo "PostgreSQL server binaries not found: installing Debian's postgresql"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; \
	fi

# A PostgreSQL server for the demo and for trying several nodes by hand: 127.0.0.1:5433, data
# and log in var/pg, left running (fsync on) until `make cluster-db-stop`.
cluster-db: $(STAMP) pg-server
	$(BIN)/python -m tests.pgserver start --data var/pg --port 5433 --database smsgw

cluster-db-stop: $(STAMP)
	$(BIN)/python -m tests.pgserver stop --data var/pg

# The demo cluster in the foreground (Ctrl-C stops it all): the SMSC simulator on its own and
# three gateway nodes sharing the PostgreSQL store of `make cluster-db` (README "Running
# several nodes"); once node a answers, conf/cluster/shared.toml (accounts, SMSC, route) is
# pushed to it, and all three run it. The database keeps running: `make cluster-db-stop`.
run-cluster: $(STAMP) cluster-db
	@chmod go-rwx conf/cluster/*.toml
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' INT TERM EXIT; \
	$(BIN)/smsgw simulate-smsc --config conf/cluster/simulator.toml & \
	for node in a b c; do $(BIN)/smsgw run --config conf/cluster/node-$$node.toml & done; \
	for try in $$(seq 150); do \
	  out=$$($(BIN)/smsgw config push conf/cluster/shared.toml \
	         --config conf/cluster/node-a.toml 2>&1); rc=$$?; \
	  test $$rc -eq 3 || break; sleep 0.2; \
	done; echo "config push: $$out"; \
	wait

test: lint typecheck pytest

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) pg-server
	$(BIN)/python bench/bench_codec.py
	$(BIN)/python bench/bench_logs.py
	$(BIN)/python bench/bench_e2e.py
	$(BIN)/python bench/bench_nodes.py
	$(BIN)/python bench/bench_bindflood.py
	$(BIN)/python bench/bench_idle.py
	$(BIN)/python bench/compare.py --no-install
	$(BIN)/python bench/bench_pg_driver.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var
