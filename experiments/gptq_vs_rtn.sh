#!/usr/bin/env bash
# GPTQ against RTN on SmolLM2-135M, and which GPTQ settings decide it: 12 of 30 blocks at
# 2 bits by ldi order (the rest at 4) and all 30 at 4 bits, perplexity on 8 held-out
# WikiText-2 pieces (calibration on the other articles). One Hydra multirun per question;
# every run shares results/ (scores, reference, GPTQ blocks), so a rerun resumes.
# Usage: experiments/gptq_vs_rtn.sh [more overrides...]; then experiments/quant_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
common=(model=smollm2-135m metric=ldi "sweep.fractions=[0,0.4]" eval.limit=8 eval.kl=false tracking=none "$@")
python run.py "${common[@]}" quant=rtn sweep
python run.py -m "${common[@]}" quant=gptq quant.settings.true_sequential=false,true sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 quant.settings.act_order=true sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 calib.samples=128 sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 quant.settings.inputs=sequential sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4 sweep
python run.py "${common[@]}" quant=gptq quant.settings.damp_percent=0.1 quant.settings.mse=2.4 quant.settings.inputs=sequential calib.samples=128 sweep
python experiments/quant_table.py smollm2-135m
