"""Points whose plan does not come from an ordering: allocated to an exact budget from
the measured sensitivity (issue: beyond the paper), or read from a hand-edited file."""

from __future__ import annotations

from lwq.allocate import allocate, average_bits_budget
from lwq.apply import original_of
from lwq.cost import plan_cost
from lwq.errors import LwqError
from lwq.models import block_linears
from lwq.plan import Plan
from lwq.quant import check_bits
from lwq.recipe import digest, importance, model_identity, plain
from lwq.session import Session


def allocated_point(s: Session) -> str:
    """The plan minimising summed measured sensitivity under `budget` or `budget_bytes`."""
    cfg = s.cfg
    allowed = sorted(cfg.allowed_bits)
    for bits in allowed:
        check_bits(s.backend, bits)
    settings = {
        "bits": allowed[0],
        "table_bits": allowed,
        "quant": {"name": cfg.quant.name, "settings": plain(cfg.quant.settings)},
        "batch_size": cfg.metric.settings.get("batch_size", 8),
    }
    scores, score_key, _ = importance(cfg, s.model, s.tokenizer, s.blocks, settings, "sensitivity")
    costs = [{b: scores.details[f"kl@{b}"][i] for b in allowed} for i in range(len(s.blocks))]
    if cfg.budget_bytes is not None:
        sizes = [_block_sizes(s, i, allowed) for i in range(len(s.blocks))]
        outside = plan_cost(s.model, s.blocks, Plan((16,) * len(s.blocks)), s.backend)
        budget = int(cfg.budget_bytes) - (outside.weight_bytes - sum(outside.block_bytes))
        target = {"budget_bytes": int(cfg.budget_bytes)}
    else:
        sizes = [{b: b for b in allowed} for _ in s.blocks]
        budget = average_bits_budget(cfg.budget, len(s.blocks))
        target = {"budget": cfg.budget}
    plan = allocate(costs, sizes, budget)
    key = "allocated-" + digest(
        {
            "model": model_identity(cfg),
            "eval": s.suite.identity(),
            "sensitivity": score_key,
            "quant": s.common["quant"],
            **target,
            "allowed_bits": allowed,
        }
    )
    predicted = sum(c[b] for c, b in zip(costs, plan.bits, strict=True))
    extra = {
        "allowed_bits": allowed,
        "predicted_sensitivity": predicted,
        "sensitivity_table": {str(b): [c[b] for c in costs] for b in allowed},
    }
    s.evaluate_plan(key, "allocated", plan, target | extra)
    return key


def _block_sizes(s: Session, i: int, allowed: list[int]) -> dict[int, int]:
    linears = block_linears(original_of(s.blocks[i]))
    return {b: sum(s.backend.weight_bytes(m, b) for _, m in linears) for b in allowed}


def manual_point(s: Session, plan: Plan) -> str:
    """A plan file applied exactly as written."""
    if len(plan.bits) != len(s.blocks):
        raise LwqError(
            f"plan_file has {len(plan.bits)} blocks; {s.cfg.model.name} has {len(s.blocks)}"
        )
    key = "manual-" + digest(
        {
            "model": model_identity(s.cfg),
            "eval": s.suite.identity(),
            "plan": list(plan.bits),
            "quant": s.common["quant"],
        }
    )
    s.evaluate_plan(key, "manual", plan)
    return key
