"""Copy a model's evaluated records from a results dir into experiments/records/, the copy
that is committed and that `make figures` and experiments/takeaways.py read on a clone
with no results of its own. Failed points are left out (a rerun retries them anyway);
the perplexity suite's records come last, so figures draw it unless `--eval` says otherwise.
Usage: python experiments/commit_records.py [--results results/smollm2-paper] MODEL ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lwq.figures.cli import COMMITTED
from lwq.results.store import RecordStore


def commit(results: Path, model: str) -> Path:
    records = RecordStore(results / model / "records.jsonl").read()
    kept = [r for r in records if r.get("status", "ok") == "ok"]
    # the perplexity suite's records last (a stable sort: each suite keeps its order), so
    # `make figures` (the newest record's setting) draws perplexity; --eval paper the rest
    kept.sort(key=lambda r: r.get("config", {}).get("eval", {}).get("name") == "ppl")
    out = COMMITTED / model / "records.jsonl"
    out.unlink(missing_ok=True)
    committed = RecordStore(out)
    for record in kept:  # checksummed again, as lwq writes them
        committed.append(record)
    print(f"{model}: {len(kept)} of {len(records)} records -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--results", type=Path, default=Path("results/smollm2-paper"))
    args = parser.parse_args(argv)
    for model in args.models:
        commit(args.results, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
