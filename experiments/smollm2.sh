#!/usr/bin/env bash
# The paper's experiments on SmolLM2-135M (`make smollm2` first), sized to run in about two
# hours on a 2-core CPU, as two lanes that run side by side (one thread each):
#   gptq: 4 -> 2 GPTQ (damp 0.1, mse 2.4: the settings that beat RTN) for ldi, zd, position,
#         reverse ldi, sensitivity and 5 random orders; pruning at 4 bits on ldi; the budget
#         allocator at 3.25 and 2.5 average bits; 4 -> 2 RTN for ldi and zd (GPTQ vs RTN);
#         an lm-eval accuracy suite (ARC-Easy, PIQA, HellaSwag, Winogrande) on ldi points.
#   rtn:  8 -> 4 and 4 -> 3 RTN for ldi, zd, position and 5 random orders; pruning at 8 bits.
# Every sweep evaluates k = 0, 3, ..., 30 on 8 held-out WikiText-2 pieces (512 tokens) with
# KL to the unquantized model; points already recorded are skipped, so a rerun resumes.
# Records go to $LWQ_RESULTS (default results/smollm2-paper); `experiments/commit_records.py`
# copies them to experiments/records/, from which `make figures` draws on a fresh clone.
# Usage: experiments/smollm2.sh [gptq|rtn|all] [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
lane=${1:-all}; shift || true
export LWQ_RESULTS=${LWQ_RESULTS:-results/smollm2-paper}
ks="sweep.blocks=[0,3,6,9,12,15,18,21,24,27,30]"
common=(model=smollm2-135m tracking=none "$ks" "$@")
ppl=(eval.limit=8 eval.text_by=lwq)  # eval=ppl (the default) on 8 pieces, the text scored by the KL pass
gptq=(quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4)
run() { python run.py "${common[@]}" "${ppl[@]}" "$@"; }
runm() { python run.py -m "${common[@]}" "${ppl[@]}" "$@"; }  # -m must come before the overrides

gptq_lane() {
  runm "${gptq[@]}" ordering=ldi,zd,position,ldi_reversed,sensitivity,random5 sweep
  run "${gptq[@]}" ordering=ldi_pruned sweep
  run "${gptq[@]}" "sweep.blocks=[]" budget=3.25 sweep
  run "${gptq[@]}" "sweep.blocks=[]" budget=2.5 sweep
  runm quant=rtn ordering=ldi,zd sweep
  # accuracy: lm-eval's own prompts and metrics, 200 seeded items a task
  python run.py "${common[@]}" "${gptq[@]}" ordering=ldi eval=paper eval.limit=200 \
    "eval.tasks=[arc_easy,piqa,hellaswag,winogrande]" "sweep.blocks=[0,6,12,18,24,30]" sweep
}

rtn_lane() {
  for bits in "sweep.high=8 sweep.low=4" "sweep.high=4 sweep.low=3"; do
    # shellcheck disable=SC2086
    runm quant=rtn $bits ordering=ldi,zd,position,random5 sweep
  done
  run quant=rtn sweep.high=8 ordering=ldi_pruned sweep
}

case $lane in
  gptq) gptq_lane ;;
  rtn) rtn_lane ;;
  all) OMP_NUM_THREADS=1 gptq_lane & OMP_NUM_THREADS=1 rtn_lane & wait ;;
  *) echo "usage: experiments/smollm2.sh [gptq|rtn|all] [overrides...]" >&2; exit 2 ;;
esac
