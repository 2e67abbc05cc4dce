#!/usr/bin/env bash
# Every ordering the paper's `24bits_<model>` figure compares, for one model, as one Hydra
# multirun: LIM/ldi, ZD, three random seeds, and the reverse of ldi (a sanity bound).
# Usage: experiments/orderings.sh [model=<name>] [more overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
python run.py -m metric=ldi,zd "$@" sweep
python run.py -m metric=random metric.settings.seed=0,1,2 "$@" sweep
python run.py metric=ldi metric.reverse=true "$@" sweep
