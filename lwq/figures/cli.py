"""`python -m lwq.figures`: every figure of every model with records, one stdout line each.

A line says where the figure was written and what it lacks, or that it was not drawn
and which records are missing (with the run that writes them). Exit status: 0 when the
records were read (even if some figures lacked records), 1 when there are no records.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from lwq.errors import LwqError
from lwq.figures.blocks import blocks_figure, intersec_figure, scores_figure
from lwq.figures.damage import damage_figure
from lwq.figures.select import (
    ModelRecords,
    Perf,
    fill_from_committed,
    load_results,
    parse_perf,
)
from lwq.figures.style import FORMATS, Drawn, save
from lwq.figures.sweeps import bits_figure, removal_figure, size_figure
from lwq.runtime import PROJECT_ROOT, resolve_path

COMMITTED = PROJECT_ROOT / "experiments" / "records"  # records of the README's figures


@dataclass(frozen=True)
class Family:
    """One kind of figure; `build(records, perf, order)`; file `<name>_<model>`."""

    build: Callable[[ModelRecords, Perf | None, str], Drawn]
    needs_perf: bool = True


FAMILIES: dict[str, Family] = {
    "24bits": Family(lambda mr, perf, order: bits_figure(mr, perf, high=4, low=2)),
    "4bit_plot": Family(lambda mr, perf, order: bits_figure(mr, perf, high=8, low=4)),
    "34bits": Family(lambda mr, perf, order: bits_figure(mr, perf, high=4, low=3)),
    "removal_8bits": Family(lambda mr, p, order: removal_figure(mr, p, high=8, low=4, order=order)),
    "removal_4bits": Family(lambda mr, p, order: removal_figure(mr, p, high=4, low=2, order=order)),
    "intersec": Family(lambda mr, perf, order: intersec_figure(mr), needs_perf=False),
    "blocks": Family(lambda mr, perf, order: blocks_figure(mr), needs_perf=False),
    "scores": Family(lambda mr, perf, order: scores_figure(mr), needs_perf=False),
    "size": Family(lambda mr, perf, order: size_figure(mr, perf, order=order)),
    "damage": Family(lambda mr, perf, order: damage_figure(mr), needs_perf=False),
}


@dataclass
class Outcome:
    """What happened to one figure: written (`paths`, `fig`) or not drawn (`missing`)."""

    name: str
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None
    fig: Figure | None = None

    def line(self) -> str:
        if self.missing is not None:
            return f"{self.name}: not drawn: {self.missing}"
        written = ", ".join(str(p) for p in self.paths)
        return f"{self.name}: wrote {written}" + "".join(f"; {n}" for n in self.notes)


def _one(name: str, family: Family, mr, perf, perf_error, order, out_dir, formats) -> Outcome:
    if family.needs_perf and perf is None:
        return Outcome(name, missing=perf_error)
    try:
        drawn = family.build(mr, perf, order)
    except LwqError as err:  # MissingRecords, or a record that cannot be used
        return Outcome(name, missing=str(err))
    return Outcome(name, save(drawn.fig, out_dir, name, formats), drawn.notes, fig=drawn.fig)


def _choose_perf(spec: str | None, scale: str, records: list[dict]):
    """(Perf, None), or (None, why not) when no record carries `spec`."""
    try:
        chosen = parse_perf(spec, records)
    except LwqError as err:
        return None, str(err)
    return Perf(chosen.source, chosen.metric, scale), None


def build_figures(
    results_dir: Path,
    out_dir: Path,
    *,
    models: list[str] | None = None,
    perf: str | None = None,
    scale: str = "auto",
    only: list[str] | None = None,
    order: str = "ldi",
    eval_name: str | None = None,
    formats=FORMATS,
    committed: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Draw and save every selected figure of every selected model; `echo` one line per
    model (records used) and per figure (its `Outcome.line()`). Reads records only.
    A model without records under `results_dir` is drawn from `committed` (the records
    committed under experiments/records/), so a fresh clone draws the measured figures."""
    results = load_results(results_dir)
    for model in fill_from_committed(results, committed):
        echo(f"{model}: drawn from the committed records in {committed}")
    outcomes = []
    for model in models or sorted(results):
        if isinstance(results.get(model), LwqError):
            echo(f"{model}: records unreadable: {results[model]}")
            continue
        mr = ModelRecords.newest_setting(model, results.get(model) or [], eval_name)
        if not mr.records:
            known = sorted(m for m, r in results.items() if isinstance(r, list) and r)
            suite = f" of eval {eval_name}" if eval_name else ""
            known_text = ", ".join(known) or "none"
            echo(f"{model}: no records{suite} under {results_dir} (with records: {known_text})")
            continue
        chosen, perf_error = _choose_perf(perf, scale, mr.records)
        echo(f"{mr.describe()}; performance = {chosen or perf_error}")
        for family in only or FAMILIES:
            args = (FAMILIES[family], mr, chosen, perf_error, order, out_dir, formats)
            outcomes.append(_one(f"{family}_{model}", *args))
            echo(outcomes[-1].line())
    return outcomes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lwq.figures", description=__doc__)
    default_results = os.environ.get("LWQ_RESULTS", "results")
    parser.add_argument("--results", default=default_results, help="records dir (%(default)s)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "plots" / "out"), help="output dir")
    parser.add_argument("--model", action="append", help="only this model (repeatable)")
    parser.add_argument(
        "--perf",
        help="performance: <task>:<metric> (lwq_ppl_ref_heldout:byte_perplexity, "
        "arc_easy:acc), average:<metric>, or ppl (default: the eval task's byte perplexity)",
    )
    parser.add_argument(
        "--yscale",
        choices=("auto", "log", "linear"),
        default="auto",
        help="auto = log for perplexities, linear otherwise",
    )
    parser.add_argument("--only", action="append", choices=list(FAMILIES), help="figure kind")
    parser.add_argument("--order", default="ldi", help="ordering of removal and size figures")
    parser.add_argument("--eval", help="records of this eval suite (default: the newest's)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument(
        "--committed",
        default=str(COMMITTED),
        help="records for models with none under --results (%(default)s); '' = none",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results_dir = resolve_path(args.results)
    started = time.time()
    outcomes = build_figures(
        results_dir,
        Path(args.out),
        models=args.model,
        perf=args.perf,
        scale=args.yscale,
        only=args.only,
        order=args.order,
        eval_name=args.eval,
        formats=tuple(args.formats.split(",")),
        committed=Path(args.committed) if args.committed else None,
    )
    if not outcomes:
        print(f"no records under {results_dir}: run `python run.py` first")
        return 1
    written = sum(o.missing is None for o in outcomes)
    print(
        f"{written} of {len(outcomes)} figures written to {args.out} in "
        f"{time.time() - started:.1f} s"
    )
    return 0
