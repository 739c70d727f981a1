# synkworld's commands. Each one sets up what it needs first (see scripts/bootstrap.sh).
.PHONY: test demo demo-cluster bench lint venv clean

PORT ?= 8080
AGENTS ?= 3000
ARGS ?=

test:            ## the whole suite: lint, types, web/ tests, pytest (FerretDB, redis, Chromium)
	scripts/test.sh $(ARGS)

demo:            ## the demo map at http://127.0.0.1:$(PORT)/ with the embedded SQLite store
	scripts/bootstrap.sh python web
	.venv/bin/python -m synkworld.demo --port $(PORT) --agents $(AGENTS) $(ARGS)

demo-cluster:    ## the demo map on two processes sharing it through a redis-server of its own
	PORT=$(PORT) scripts/demo-cluster.sh --agents $(AGENTS) $(ARGS)

bench:           ## the grid-world load test; results in bench/results/
	scripts/bootstrap.sh python
	.venv/bin/python -m bench.gridworld $(ARGS)

lint:            ## ruff and mypy only
	scripts/bootstrap.sh python
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

venv:
	scripts/bootstrap.sh python

clean:
	rm -rf .venv .cache web/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
