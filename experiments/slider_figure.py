"""Sensitivity under slider beside RTN's (experiments/slider_sensitivity.sh): each block's
KL to the unquantized model with that block alone at 2 bits, one line per quantizer, read
from the scores `run.py scores` printed into experiments/records/slider/MODEL/.

Usage: python experiments/slider_figure.py [model]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\s*block\s+(\d+)\s+(\S+)\s+rank\s+\d+$")
RANKING = "least -> most important:"


def read_scores(path: Path) -> list[float]:
    """The per-block values of one `run.py scores` printout, in block order; its closing
    ranking line says how many blocks there are."""
    lines = path.read_text().splitlines()
    found = {int(m[1]): float(m[2]) for m in map(LINE.match, lines) if m}
    ranking = [line for line in lines if line.startswith(RANKING)]
    blocks = len(ranking[-1].removeprefix(RANKING).strip(" []").split(",")) if ranking else -1
    if sorted(found) != list(range(blocks)):
        raise SystemExit(f"{path}: no complete block list; rerun experiments/slider_sensitivity.sh")
    return [found[i] for i in range(blocks)]


def main(model: str = "ref-tiny") -> Path:
    folder = ROOT / "experiments" / "records" / "slider" / model
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for quant in ("rtn", "slider"):
        values = read_scores(folder / f"sensitivity-{quant}.txt")
        ax.plot(range(len(values)), values, marker="o", label=quant)
    ax.set_yscale("log")
    ax.set_xlabel("block (alone at 2 bits, group 128)")
    ax.set_ylabel("KL to the unquantized model")
    ax.set_title(f"{model}: sensitivity under rtn and slider")
    ax.legend()
    fig.tight_layout()
    out = ROOT / "experiments" / "figures" / f"slider_sensitivity_{model}.png"
    fig.savefig(out, dpi=120)
    print(out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
