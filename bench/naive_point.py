"""One sweep point the way researchers script it by hand: a fresh process loads the
checkpoint, quantizes every block at its planned width, saves the quantized checkpoint,
and runs the `lm_eval` command line on it. `bench/pipeline.py` times this against lwq.

The quantizer is lwq's RTN (the same maths, so the perplexities must agree); everything
around it is what a hand-written pipeline pays per point: interpreter and library start,
model load, a checkpoint written and read back, lm-eval's task index and task building.

python -m bench.naive_point --model DIR --plan '[4,2,...]' --group-size 128
    --tasks-dir DIR --task NAME --batch-size 8 --max-length 256 --work DIR
Prints lm-eval's metrics of the task as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lwq.modeling.blocks import block_linears, find_blocks
from lwq.quant import make_backend


def quantize_checkpoint(model_dir: str, plan: list[int], group_size: int, out: Path) -> None:
    """Every block's linears at their planned bits (RTN), saved as a new checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rtn = make_backend("rtn", group_size=group_size)
    blocks = find_blocks(model)
    if len(plan) != len(blocks):
        raise SystemExit(f"the plan has {len(plan)} widths for {len(blocks)} blocks")
    for block, bits in zip(blocks, plan, strict=True):
        for _, linear in block_linears(block):
            rtn.quantize(linear, bits)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def lm_eval_cli(checkpoint: Path, args, output: Path) -> dict:
    """The task's metrics from the `lm_eval` command line, read from its results file."""
    command = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={checkpoint},dtype=float32,max_length={args.max_length}",
        "--tasks",
        args.task,
        "--include_path",
        str(args.tasks_dir),
        "--batch_size",
        str(args.batch_size),
        "--device",
        "cpu",
        "--output_path",
        str(output),
    ]
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    (results,) = output.rglob("results_*.json")
    metrics = json.loads(results.read_text())["results"][args.task]
    return {k.removesuffix(",none"): v for k, v in metrics.items() if k.endswith(",none")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--plan", required=True, help="JSON list of bits per block")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--tasks-dir", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True, help="checkpoint and results dir")
    args = parser.parse_args(argv)
    checkpoint = args.work / "checkpoint"
    quantize_checkpoint(args.model, json.loads(args.plan), args.group_size, checkpoint)
    print(json.dumps(lm_eval_cli(checkpoint, args, args.work / "lm_eval")))


if __name__ == "__main__":
    sys.exit(main())
