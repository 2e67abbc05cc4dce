"""The paper's figures (and a few more), drawn from the result records only.

`python -m lwq.figures` (`make figures`) reads `results/<model>/records.jsonl` for every
model and writes PNG and PDF files to `plots/out/`; see plots/README.md for the figures,
the records each one selects and the options. Nothing here loads or evaluates a model.
"""

from lwq.figures.cli import FAMILIES, build_figures, main
from lwq.figures.select import MissingRecords, ModelRecords, Perf, load_results, parse_perf

__all__ = [
    "FAMILIES",
    "MissingRecords",
    "ModelRecords",
    "Perf",
    "build_figures",
    "load_results",
    "main",
    "parse_perf",
]
