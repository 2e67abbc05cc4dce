"""Finer allocation units (allocate.unit): plans whose blocks hold linears at different
widths, built by every kind of backend, sized, measured and allocated."""

import math

import pytest
import torch

from lwq.allocate import allocate
from lwq.errors import LwqError
from lwq.metrics import METRICS
from lwq.metrics.sensitivity import CalibrationKL
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.plan import Plan, read_plan_file
from lwq.quant import make_backend
from lwq.quant.cost import SizeTable
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from lwq.units import FUSED, alone, check_ties, make_units, plan_of, unit_bits_of
from tests.shrunk import shrunk_model

NAMES = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def test_units_of_each_kind_cover_every_linear_once():
    names = [NAMES, NAMES]
    for kind, per_block in (("block", 1), ("sublayer", 2), ("linear", 7)):
        units = make_units(names, kind)
        assert len(units) == 2 * per_block
        for i in range(2):
            covered = sorted(j for u in units if u.block == i for j in u.linears)
            assert covered == list(range(7)), kind
    sub = make_units(names, "sublayer")
    assert [u.name for u in sub[:2]] == ["0.self_attn", "0.mlp"]
    assert sub[0].linears == (0, 1, 2, 3) and sub[1].linears == (4, 5, 6)
    tied = make_units(names, "linear", FUSED)
    assert [u.name for u in tied[:4]] == [
        "0.q_proj+k_proj+v_proj",
        "0.o_proj",
        "0.gate_proj+up_proj",
        "0.down_proj",
    ]
    assert tied[0].linears == (0, 1, 2) and tied[2].linears == (4, 5)


def test_a_tie_naming_fewer_than_two_linears_is_refused():
    check_ties(NAMES, FUSED)
    with pytest.raises(LwqError, match=r"names 1 of this model's linears .*ties=\[\]"):
        check_ties(NAMES, [["q_proj", "qkv"]])
    with pytest.raises(LwqError, match="allocate.unit must be one of"):
        make_units([NAMES], "head")


def test_a_unit_plan_becomes_a_block_plan_and_back():
    units = make_units([NAMES] * 3, "linear", FUSED)  # 4 units a block
    n = [7, 7, 7]
    bits = (4, 4, 4, 4, 2, 4, 2, 8, 3, 3, 3, 3)
    plan = plan_of(units, bits, n)
    assert plan.bits[0] == 4  # uniform: stored as the block's one width
    assert plan.bits[1] == (2, 2, 2, 4, 2, 2, 8) and plan.bits[2] == 3
    assert plan.mixed and unit_bits_of(plan, units, n) == bits
    with pytest.raises(LwqError, match="several widths"):
        unit_bits_of(Plan(((2, 4, 4, 4, 4, 4, 4), 4, 4)), units, n)
    assert alone(units, 5, 2, n).bits == (16, (16, 16, 16, 2, 16, 16, 16), 16)


def test_plans_store_uniform_tuples_as_one_width_and_read_mixed_plan_files(tmp_path):
    assert Plan(([4, 4], (2, 2), 3)) == Plan((4, 2, 3))
    plan = Plan((4, (2, 4)))
    assert Plan.from_json(plan.to_json()) == plan and plan.as_list() == [4, [2, 4]]
    with pytest.raises(ValueError, match="SizeTable"):
        _ = plan.avg_bits
    with pytest.raises(LwqError, match="block 1 3 widths; it has 2 linears"):
        Plan((4, (2, 4, 4))).widths(1, 2)
    (tmp_path / "p.yaml").write_text("bits: [4, [2, 2, 4], 3]\n")
    assert read_plan_file(tmp_path / "p.yaml") == Plan((4, (2, 2, 4), 3))
    (tmp_path / "q.yaml").write_text("0: 4\n1: [2, 4]\n")
    assert read_plan_file(tmp_path / "q.yaml") == Plan((4, (2, 4)))


def _model(blocks=3):
    model = shrunk_model("llama", blocks=blocks)
    return model, find_blocks(model)


def test_sizes_of_a_mixed_block_are_its_linears_at_their_widths():
    model, blocks = _model()
    table = SizeTable(model, blocks, make_backend("rtn", group_size=32))
    n = len(table.linear_names[0])
    widths = tuple([2] * (n - 1) + [8])
    expected = sum(table.linear_bytes(0, j, b) for j, b in enumerate(widths))
    assert table.block_bytes(0, widths) == expected
    assert table.block_bytes(0, widths) < table.block_bytes(0, 4)
    weights = table.linear_weights[0]
    cost = table.cost(Plan((widths, 4, 4)))
    mean0 = sum(b * w for b, w in zip(widths, weights, strict=True)) / sum(weights)
    assert cost.avg_bits == pytest.approx((mean0 + 8) / 3)


def test_rtn_builds_a_mixed_block_linear_by_linear():
    model, blocks = _model()
    backend = make_backend("rtn", group_size=32)
    originals = [m.weight.detach().clone() for _, m in block_linears(blocks[1])]
    n = len(originals)
    widths = tuple(2 if j % 2 else 16 for j in range(n))
    applier = PlanApplier(blocks, Engine(backend))
    applier.apply(Plan((16, widths, 16)))
    for (name, module), original, bits in zip(
        block_linears(blocks[1]), originals, widths, strict=True
    ):
        if bits == 16:
            assert torch.equal(module.weight, original), name
        else:  # what the backend makes of this linear alone at 2 bits
            reference = torch.nn.Linear(original.shape[1], original.shape[0], bias=False)
            reference.weight.data = original.clone()
            expected = backend.quantize(reference, 2).weight
            assert not torch.equal(module.weight, original), name
            assert torch.equal(module.weight, expected), name
    applier.restore()
    assert all(
        torch.equal(m.weight, o)
        for (_, m), o in zip(block_linears(blocks[1]), originals, strict=True)
    )


def test_a_window_backend_refuses_a_mixed_block():
    model, blocks = _model(blocks=2)
    engine = Engine(make_backend("slider", epochs=2), capture=lambda: None)
    with pytest.raises(LwqError, match="allocate.unit=block"):
        PlanApplier(blocks, engine).apply(Plan(((2, 4, 4, 4, 4, 4, 4), 4)))


def _calibration(n=4, seq=16):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("unit", ["sublayer", "linear"])
def test_unit_sensitivity_is_the_kl_of_each_unit_alone(unit):
    model, blocks = _model(blocks=2)
    calibration = _calibration()
    engine = Engine(make_backend("rtn", group_size=32))
    scores = METRICS.get("sensitivity").compute(
        model, blocks, calibration, engine=engine, bits=2, table_bits=[4], unit=unit
    )
    names = [[n for n, _ in block_linears(b)] for b in blocks]
    units = make_units(names, unit)
    assert len(scores.details["kl@2"]) == len(units) == len(scores.details["ppl@16"])
    reference = CalibrationKL.of(model, calibration, 8, 0.25)
    applier = PlanApplier(blocks, engine)
    for u in range(len(units)):
        for b in (2, 4):
            applier.apply(alone(units, u, b, [len(n) for n in names]))
            kl, _ = reference.measure()
            assert scores.details[f"kl@{b}"][u] == pytest.approx(kl, rel=1e-5, abs=1e-9), (u, b)
    applier.restore()
    assert all(v > 0 for v in scores.details["kl@2"])


def test_block_sensitivity_is_unchanged_by_the_unit_setting():
    model, blocks = _model(blocks=2)
    engine = Engine(make_backend("rtn", group_size=32))
    compute = METRICS.get("sensitivity").compute
    default = compute(model, blocks, _calibration(), engine=engine, bits=2)
    explicit = compute(model, blocks, _calibration(), engine=engine, bits=2, unit="block")
    assert default.details == explicit.details and len(default.values) == 2


def test_allocation_over_linear_units_meets_a_nominal_budget_per_weight():
    """The DP over units with sizes bits x weights: the plan's weighted nominal bits stay
    under the budget, and tied linears share their width."""
    model, blocks = _model(blocks=3)
    table = SizeTable(model, blocks, make_backend("rtn", group_size=32))
    units = make_units(table.linear_names, "linear", FUSED)
    weights = [sum(table.linear_weights[u.block][j] for j in u.linears) for u in units]
    gen = torch.Generator().manual_seed(1)
    costs = [{2: float(torch.rand(1, generator=gen)) + 0.5, 4: 0.1} for _ in units]
    sizes = [{b: b * w for b in (2, 4)} for w in weights]
    limit = math.floor(3.25 * sum(weights))
    chosen = allocate(costs, sizes, limit)
    n = [len(x) for x in table.linear_names]
    plan = plan_of(units, chosen.bits, n)
    assert plan.mixed and table.cost(plan).avg_bits <= 3.25 + 1e-9  # blocks of equal size
    used = sum(b * w for b, w in zip(chosen.bits, weights, strict=True))
    assert used <= limit
    for i in range(3):  # ties hold: q, k and v of a block share one width
        widths = plan.widths(i, n[i])
        assert widths[0] == widths[1] == widths[2] and widths[4] == widths[5]


def test_a_killed_sensitivity_table_resumes_after_its_finished_blocks(tmp_path, monkeypatch):
    """Killed while measuring block 1, the table keeps block 0's rows; the rerun measures
    blocks 1 and 2 only and gives the uninterrupted table."""
    import lwq.metrics.sensitivity as sensitivity

    model, blocks = _model(blocks=3)
    compute = METRICS.get("sensitivity").compute
    settings = {"bits": 2, "table_bits": [4], "unit": "sublayer"}
    whole = compute(
        model, blocks, _calibration(), engine=Engine(make_backend("rtn", group_size=32)), **settings
    )
    checkpoint = tmp_path / "table.rows.partial"
    real, measured = sensitivity.alone, []

    def dying(units, u, b, n):
        measured.append(units[u].block)
        if units[u].block == 1:
            raise KeyboardInterrupt  # a kill while block 1 is measured
        return real(units, u, b, n)

    monkeypatch.setattr(sensitivity, "alone", dying)
    engine = Engine(make_backend("rtn", group_size=32))
    with pytest.raises(KeyboardInterrupt):
        compute(model, blocks, _calibration(), engine=engine, checkpoint=checkpoint, **settings)
    assert checkpoint.is_file()
    measured.clear()
    monkeypatch.setattr(
        sensitivity, "alone", lambda *a: (measured.append(a[0][a[1]].block), real(*a))[1]
    )
    again = compute(model, blocks, _calibration(), engine=engine, checkpoint=checkpoint, **settings)
    assert set(measured) == {1, 2} and not checkpoint.exists()
    assert again.details == whole.details and again.seconds is not None
