#!/usr/bin/env bash
# SliderQuant against GPTQ and RTN (issue #23): every block at 3 and at 2 bits (sweep
# 3 -> 2 at k = 0 and k = L), per output channel (group_size 0: the paper's 2-bit claim)
# and at group 128, for rtn, gptq (damp 0.1, mse 2.4: its best settings here) and slider
# with its sliding windows and block by block (window 1, stride 1, fill 1: the ablation).
# All three calibrate on the same sequences (slider's CPU preset, below); held-out
# perplexity and KL to the unquantized model on the model's eval text; each record has
# its calibration seconds (`quantize_seconds`) and peak memory (`quantize_memory`).
# ref-tiny adds slider's epochs (4, 20, 60) and a 4x larger calibration set (for slider
# and gptq) at 2 bits per channel; SmolLM2 adds slider at 3x the epochs and both at 4x
# the data (2 bits, group 128), and a 4 -> 2 ldi sweep at group 128 with slider beside
# GPTQ (k = 0, 15, 30: each point is a calibration of its own plan).
# Records go to $LWQ_RESULTS (default results/slider); points already recorded are
# skipped (a killed slider calibration resumes from its last window), so a rerun resumes.
# `experiments/slider_table.py MODEL` prints the table; copy the records to
# experiments/records/slider/MODEL/ to commit them.
# Usage: experiments/slider.sh [ref-tiny|smollm2-135m] [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-ref-tiny}; shift || true
export LWQ_RESULTS=${LWQ_RESULTS:-results/slider}
usage="usage: experiments/slider.sh [ref-tiny|smollm2-135m] [overrides...]"
source experiments/slider_presets.sh
common=(model="$model" tracking=none metric=ldi "${evals[@]}" "${calib[@]}" "$@")
uniform=(sweep.high=3 sweep.low=2 "sweep.fractions=[0,1]")
gptq=(quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4)
slider=(quant=slider "quant.settings.epochs=$epochs")
blockwise=(quant.settings.window=1 quant.settings.stride=1 quant.settings.fill=1)
run() { python run.py "${common[@]}" "$@" sweep; }

for group in 0 128; do
  run "${uniform[@]}" quant=rtn "quant.settings.group_size=$group"
  run "${uniform[@]}" "${gptq[@]}" "quant.settings.group_size=$group"
  run "${uniform[@]}" "${slider[@]}" "quant.settings.group_size=$group"
  run "${uniform[@]}" "${slider[@]}" "${blockwise[@]}" "quant.settings.group_size=$group"
done
case $model in
  ref-tiny)  # what more training and more data buy at 2 bits per channel
    two=(sweep.high=3 sweep.low=2 "sweep.fractions=[1]" quant=slider quant.settings.group_size=0)
    run "${two[@]}" quant.settings.epochs=4
    run "${two[@]}" quant.settings.epochs=60
    run "${two[@]}" "quant.settings.epochs=$epochs" calib.samples=64
    run sweep.high=3 sweep.low=2 "sweep.fractions=[1]" "${gptq[@]}" quant.settings.group_size=0 \
      calib.samples=64 ;;  # GPTQ given the same larger set
  smollm2-135m)  # at 2 bits, group 128: three times the epochs; four times the data
    two=(sweep.high=3 sweep.low=2 "sweep.fractions=[1]" quant.settings.group_size=128)
    run "${two[@]}" quant=slider "quant.settings.epochs=$((3 * epochs))"
    run "${two[@]}" "${slider[@]}" calib.samples=32
    run "${two[@]}" "${gptq[@]}" calib.samples=32
    run "${gptq[@]}" "sweep.blocks=[0,15,30]"
    run "${slider[@]}" quant.settings.group_size=128 "sweep.blocks=[0,15,30]" ;;
esac
python experiments/slider_table.py "$model"
