#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on a GPU machine with no network whose python3 (3.12, x86-64) has torch,
# transformers, peft and accelerate but nothing else of tunelab's: wheels for the rest (and transformers and
# peft at the tested versions), mistral-common's wheel (Mistral-7B-v0.1's tokenizer), a GSM8K copy, and the
# SmolLM2 tokenizer that the gpu tests' tiny models use. ~30 MB. The folder is a local copy: never commit it.
#
# Run as: bash benchmarks/gpu_bundle.sh .gpu        (after make setup; benchmarks/README.md says what runs there)
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_bundle.sh DIR}
py=${PY:-.venv/bin/python}
gsm8k=${TUNELAB_GSM8K:-../shared/data/gsm8k}
mkdir -p "$out/wheels" "$out/gsm8k" "$out/cache/models/smollm2-135m-instruct"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out/wheels" \
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.23.0 peft==0.21.2
cp .venv/share/mistral_common-*.whl "$out/"
cp "$gsm8k/train.jsonl" "$gsm8k/test.jsonl" "$out/gsm8k/"
smol=$("$py" -c "from tunelab.models import resolve; print(resolve('smollm2-135m-instruct'))")
cp "$smol"/config.json "$smol"/tokenizer* "$out/cache/models/smollm2-135m-instruct/"
du -sh "$out"
