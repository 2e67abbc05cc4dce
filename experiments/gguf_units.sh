#!/usr/bin/env bash
# SmolLM2 planned in the GGUF file's own bits (issue #25): the sensitivity table measured
# with ggml's quantizer and llama.cpp's fallbacks (quant=gguf fallback=llama_cpp: what the
# file will hold), the DP plan under a budget of GGUF bits per weight at block and at
# linear unit, each exported through llama.cpp's converter and quantizer and checked:
# the file's bits against the plan's, llama.cpp's perplexity beside lwq's on the same
# tokens. SmolLM2's 576-wide rows send q2_k to q4_0, so with allowed_bits=[2,4] a file
# reaches 4.03..5.25 bits per weight only (a 3.25 budget is refused with that arithmetic);
# 4.5 sits inside. Manifests go to $LWQ_RESULTS/exports (default results/gguf-units).
# Usage: experiments/gguf_units.sh [budget] [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-4.5}; shift || true
results=${LWQ_RESULTS:-results/gguf-units}
for unit in block linear; do
  python run.py command=export model=smollm2-135m tracking=none paths.results="$results" \
    quant=gguf +quant.settings.fallback=llama_cpp allocate.format=gguf budget="$budget" \
    "allowed_bits=[2,4]" allocate.unit=$unit calib.samples=8 \
    export.out="$results/exports/smollm2-gguf-$budget-$unit.gguf" "$@"
done
