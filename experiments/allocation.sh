#!/usr/bin/env bash
# The allocation study (issue #25): at 3.25 and 2.5 average bits and one bytes budget,
# with GPTQ (damp 0.1, mse 2.4: its best settings here) and RTN g128, the plans of the
# exact allocator (DP on summed single-unit KL) and of the evolutionary search, each at
# block and at linear unit (allocate.unit; no ties: the budgets are nominal), beside
# the two-level orders they must beat at equal bytes: ldi (LIM), zd, position, sensitivity
# and 5 random orders at every k. Held-out perplexity and KL on the model's eval text (not
# the calibration text the sensitivity table and the search are tuned on); each plan
# record also has its predicted (summed) and realized calibration KL (`damage`), and
# `experiments/allocation_table.py` prints the comparison with each method's seconds.
# Records go to $LWQ_RESULTS (default results/allocation); points already recorded are
# skipped, so a rerun resumes. QUANTS and UNITS (space-separated; default all) split the
# study into lanes run side by side (OMP_NUM_THREADS=1 each), sharing $LWQ_RESULTS: e.g.
# `UNITS=block experiments/allocation.sh smollm2-135m` beside the full script, which then
# finds the block plans and the two-level sweeps recorded when it reaches them.
# Usage: [QUANTS="gptq rtn"] [UNITS="block linear"] experiments/allocation.sh [model] [overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-ref-tiny}; shift || true
export LWQ_RESULTS=${LWQ_RESULTS:-results/allocation}
case $model in
  ref-tiny)  # every k, 16 held-out pieces
    ks="sweep.blocks=[0,1,2,3,4,5,6,7,8,9,10,11,12]"; evals=(eval.limit=16); bytes=2000000 ;;
  smollm2-135m)  # every third k, 8 held-out pieces scored by the KL pass; 16 x 256
    # calibration tokens (the search's 4096): a linear-unit table is 840 measurements
    ks="sweep.blocks=[0,3,6,9,12,15,18,21,24,27,30]"
    evals=(eval.limit=8 eval.text_by=lwq calib.samples=16)
    bytes=97000000 ;;
  *) echo "usage: experiments/allocation.sh [ref-tiny|smollm2-135m] [overrides...]" >&2; exit 2 ;;
esac
common=(model="$model" tracking=none "${evals[@]}" "$@")
gptq=(quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4)
rtn=(quant=rtn)
for quant in ${QUANTS:-}; do [[ $quant == gptq || $quant == rtn ]] || {
  echo "QUANTS takes gptq and/or rtn, got '$quant'" >&2; exit 2; }; done
for unit in ${UNITS:-}; do [[ $unit == block || $unit == linear ]] || {
  echo "UNITS takes block and/or linear, got '$unit'" >&2; exit 2; }; done
budgets=(budget=3.25 budget=2.5 "budget_bytes=$bytes")

for quant in ${QUANTS:-gptq rtn}; do
  declare -n q=$quant
  for budget in "${budgets[@]}"; do  # first: the two-level points then get `damage` too
    for unit in ${UNITS:-block linear}; do
      for method in dp search; do
        python run.py "${common[@]}" "${q[@]}" "$budget" allocate.method=$method \
          allocate.unit=$unit "sweep.blocks=[]" sweep
      done
    done
  done
  python run.py -m "${common[@]}" "${q[@]}" "$ks" \
    ordering=ldi,zd,position,sensitivity,random5 sweep
done
python experiments/allocation_table.py "$model"
