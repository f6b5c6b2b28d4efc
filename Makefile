# Set-up and main jobs. `make demo` and `make test` work on a fresh machine: they create .venv and install
# everything first (torch==2.13.0 before anything else, see ../shared/MODELS.md: any other torch spec pulls a
# multi-GB CUDA build).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= ../shared/data
STAMP   := $(VENV)/.retr-installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast bench-beir clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all]"
	touch $(STAMP)

demo: install
	$(BIN)/retr eval --model minilm --data $(DATA)/scifact --split test --output out/demo/scifact-minilm.json --run out/demo/scifact-minilm.trec

test: install
	TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -x --durations=15

test-fast: install
	TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -x -m "not slow and not java and not distributed"

bench-beir: install
	$(BIN)/retr eval --suite benchmarks/beir_suite.yaml -d $(DATA)/scifact -d $(DATA)/nfcorpus -d $(DATA)/arguana --output-dir out/leaderboard
	$(BIN)/python benchmarks/update_results.py out/leaderboard

clean:
	rm -rf out build *.egg-info .pytest_cache
