"""Keys stay valid: every point committed under experiments/records/ is planned again, from
the config its record keeps, by today's planner (lwq.commands.points.plan_points, the one
the sweep, the dry run and export use), under the same point key and plan key and with
the same plan. A run of that config today would find every one of them already done."""

from __future__ import annotations

import json

import pytest

from lwq.commands.identity import run_identity
from lwq.commands.points import plan_points
from lwq.config import from_plain
from lwq.figures.cli import COMMITTED
from lwq.metrics import Scores
from lwq.modeling.blocks import find_blocks
from lwq.modeling.load import checkpoint_config, meta_model
from lwq.quant.cost import SizeTable
from lwq.results.store import RecordStore
from lwq.runtime import resolve_model_path

MODELS = ["ref-tiny", "smollm2-135m"]


def _sizes(run) -> SizeTable:
    model = meta_model(checkpoint_config(resolve_model_path(run.model.path)))
    return SizeTable(model, find_blocks(model), run.quant.backend)


def _recorded_scores(records: list[dict]):
    """A score source that knows only what the records kept: each ordering's scores, and
    the sensitivity table an allocation was made from. Keys never depend on score values."""
    known = {}
    for r in records:
        if r["kind"] == "allocated":
            table = {f"kl@{b}": tuple(v) for b, v in r["sensitivity_table"].items()}
            known["sensitivity"] = Scores(table[f"kl@{r['allowed_bits'][0]}"], True, table)
        elif "scores" in r:
            settings = json.dumps(r["metric_settings"], sort_keys=True)
            known[r["metric"], settings] = Scores(tuple(r["scores"]), r["higher_is_important"])

    def source(metric: str, settings: dict):
        key = identity.score_key(metric, settings)
        found = known.get((metric, json.dumps(key["settings"], sort_keys=True)))
        return found or (known.get("sensitivity") if metric == "sensitivity" else None), key

    run = from_plain(records[0]["config"])
    backend = run.quant.backend
    identity = run_identity(run, backend, run.eval.spec.identity())
    return run, identity, source


@pytest.mark.parametrize("model", MODELS)
def test_every_committed_point_is_planned_again_under_its_key(model):
    records = RecordStore(COMMITTED / model / "records.jsonl").read()
    assert len(records) > 100
    by_config: dict[str, list[dict]] = {}
    for r in records:
        by_config.setdefault(json.dumps(r["config"], sort_keys=True), []).append(r)
    missing = []
    for group in by_config.values():
        run, identity, source = _recorded_scores(group)
        points = {p.key: p for p in plan_points(run, identity, _sizes(run), source)}
        for record in group:
            point = points.get(record["point_key"])
            if point is None:
                missing.append(record["point_key"])
                continue
            assert point.plan_key(identity) == record["plan_key"], record["point_key"]
            assert list(point.plan.bits) == record.get("plan", list(point.plan.bits))
    assert missing == [], f"{len(missing)} of {len(records)} committed points not planned again"
