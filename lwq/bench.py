"""`make bench`: time the default sweep end to end and write the numbers to a file.

Speed is shown here, never by timed assertions in tests. Run it alone on the machine:
torch threads of two busy processes slow each other down by several times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from lwq.paths import PROJECT_ROOT
from lwq.sweep import run_sweep


def bench_default_sweep(overrides: list[str]) -> dict:
    """Run the default sweep into a scratch results dir; summarise where the time went."""
    with tempfile.TemporaryDirectory() as scratch:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[f"paths.results={scratch}", "tracking=none", *overrides],
            )
        started = time.time()
        records = run_sweep(cfg)
        total = time.time() - started
    points = [r for r in records if r["kind"] == "quantized"]
    evals = [r["seconds"] for r in records]
    return {
        "what": "default sweep (python run.py), cold caches",
        "overrides": overrides,
        "total_seconds": round(total, 1),
        "points": len(points),
        "evaluations": len(records),
        "eval_seconds_mean": round(sum(evals) / len(evals), 2),
        "quantize_seconds_mean": round(sum(r["quantize_seconds"] for r in points) / len(points), 3),
        "setup_seconds": round(total - sum(evals) - sum(r["quantize_seconds"] for r in points), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the benchmarked sweep")
    args = parser.parse_args(argv)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "default_sweep": bench_default_sweep(args.overrides),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
