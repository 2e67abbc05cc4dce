#!/usr/bin/env bash
# Sensitivity under slider (issue #23): each block alone at 2 bits (group 128), the rest
# unquantized, KL to the unquantized model on the calibration tokens; with slider that is a
# full calibration of each one-block plan (L calibrations), beside RTN's. The SliderQuant
# paper sees a U-shape at W4A4 (first and last blocks most sensitive). The printed scores go
# to experiments/records/slider/MODEL/ and experiments/slider_figure.py draws them.
# Usage: experiments/slider_sensitivity.sh [ref-tiny|smollm2-135m] [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-ref-tiny}; shift || true
export LWQ_RESULTS=${LWQ_RESULTS:-results/slider}
usage="usage: experiments/slider_sensitivity.sh [ref-tiny|smollm2-135m] [overrides...]"
source experiments/slider_presets.sh  # slider.sh's calibration and epochs
out=experiments/records/slider/$model
mkdir -p "$out"
common=(model="$model" tracking=none metric=sensitivity "metric.settings.table_bits=[2]"
        sweep.low=2 "${calib[@]}" "$@")
python run.py "${common[@]}" quant=rtn scores | tee "$out/sensitivity-rtn.txt"
python run.py "${common[@]}" quant=slider quant.settings.group_size=128 \
  "quant.settings.epochs=$epochs" scores | tee "$out/sensitivity-slider.txt"
python experiments/slider_figure.py "$model"
