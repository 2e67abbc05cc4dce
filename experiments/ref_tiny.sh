#!/usr/bin/env bash
# The SmolLM2 experiment set (experiments/smollm2.sh) on the embedded 12-block ref-tiny, for
# the takeaways table's side-by-side column: every k, 16 held-out pieces, one lane (~25 min on one thread).
# Usage: experiments/ref_tiny.sh [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
export LWQ_RESULTS=${LWQ_RESULTS:-results/smollm2-paper}
common=(model=ref-tiny eval.limit=16 tracking=none "sweep.blocks=[0,1,2,3,4,5,6,7,8,9,10,11,12]" "$@")
gptq=(quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4)
run() { python run.py "${common[@]}" "$@"; }
runm() { python run.py -m "${common[@]}" "$@"; }  # -m must come before the overrides

runm "${gptq[@]}" ordering=ldi,zd,position,ldi_reversed,sensitivity,random5 sweep
run "${gptq[@]}" ordering=ldi_pruned sweep
run "${gptq[@]}" "sweep.blocks=[]" budget=3.25 sweep
run "${gptq[@]}" "sweep.blocks=[]" budget=2.5 sweep
runm quant=rtn ordering=ldi,zd sweep
for bits in "sweep.high=8 sweep.low=4" "sweep.high=4 sweep.low=3"; do
  # shellcheck disable=SC2086
  runm quant=rtn $bits ordering=ldi,zd,position,random5 sweep
done
run quant=rtn sweep.high=8 ordering=ldi_pruned sweep
