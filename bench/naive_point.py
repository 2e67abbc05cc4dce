"""One sweep point the way researchers script it by hand: a fresh process loads the
checkpoint, quantizes every block at its planned width, saves the quantized checkpoint,
and runs the `lm_eval` command line on it. `bench/pipeline.py` times this against lwq.

The quantizer is lwq's RTN, or with `--gptq SETTINGS` lwq's GPTQ run over the whole model
for this point: calibration windows drawn and every block's inputs captured again, each
block at its planned width calibrated on the unquantized model's inputs, as lwq's default
`inputs: full_precision` does (the same maths, so the perplexities must agree). Everything
around it is what a hand-written pipeline pays per point: interpreter and library start,
model load, calibration, a checkpoint written and read back, lm-eval's task index and task
building.

python -m bench.naive_point --model DIR --plan '[4,2,...]' --group-size 128
    --tasks-dir DIR --task NAME --batch-size 8 --max-length 256 --work DIR
    [--gptq '{"damp_percent": 0.1, ...}' --calib '{"text": ..., "data": ..., ...}']
Prints lm-eval's metrics of the task as one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lwq.data import calibration_ids, load_texts
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.quant import make_backend
from lwq.quant.engine import quantize_block


def quantize_checkpoint(
    model_dir: str, plan: list[int], group_size: int, out: Path, gptq=None, calib=None
) -> None:
    """Every block at its planned bits (RTN, or GPTQ with `gptq` settings on `calib`
    windows), saved as a new checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    blocks = find_blocks(model)
    if len(plan) != len(blocks):
        raise SystemExit(f"the plan has {len(plan)} widths for {len(blocks)} blocks")
    if gptq is None:
        rtn = make_backend("rtn", group_size=group_size)
        for block, bits in zip(blocks, plan, strict=True):
            for _, linear in block_linears(block):
                rtn.quantize(linear, bits)
    else:
        gptq_whole_model(model, tokenizer, blocks, plan, gptq, calib)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gptq_whole_model(model, tokenizer, blocks, plan: list[int], settings: dict, calib: dict):
    """GPTQ on every block of the plan, each on the unquantized model's inputs."""
    backend = make_backend("gptq", **settings)
    texts = load_texts(calib["text"], Path(calib["data"]))
    ids = calibration_ids(
        texts, tokenizer, samples=calib["samples"], seq_len=calib["seq_len"], seed=calib["seed"]
    )
    inputs = BlockInputs.capture(model, blocks, ids, 8)
    for i, bits in enumerate(plan):
        original = blocks[i]
        if bits != 16:
            blocks[i] = quantize_block(copy.deepcopy(original), backend, bits, inputs, i)
        if i + 1 < len(plan):
            inputs.advance(original)


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
    parser.add_argument("--gptq", help="JSON settings of lwq's gptq backend (else RTN)")
    parser.add_argument("--calib", help="JSON {text, data, samples, seq_len, seed} for GPTQ")
    args = parser.parse_args(argv)
    checkpoint = args.work / "checkpoint"
    gptq = json.loads(args.gptq) if args.gptq else None
    calib = json.loads(args.calib) if args.calib else None
    quantize_checkpoint(args.model, json.loads(args.plan), args.group_size, checkpoint, gptq, calib)
    print(json.dumps(lm_eval_cli(checkpoint, args, args.work / "lm_eval")))


if __name__ == "__main__":
    sys.exit(main())
