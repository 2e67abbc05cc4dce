"""GPTQ: calibrated blocks, the inputs they are calibrated on, and the result it is known for.

The contract every backend meets (bytes, SNR, sweeps) is in test_backends.py; here is what
only a calibrated backend has: block inputs carried through the model, variants built
once per (block, bits) on full-precision inputs or rebuilt on the plan's own inputs in
sequential mode, and GPTQ's well-known win over round-to-nearest at 3 and 2 bits.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lwq.data import chunk_documents, load_texts, seeded_subset
from lwq.errors import LwqError
from lwq.evaluation.perplexity import perplexity
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan, two_level_plan
from lwq.quant import make_backend
from lwq.quant.base import FULL_PRECISION
from lwq.quant.engine import Engine, quantize_block
from lwq.quant.gptq import GPTQBackend
from lwq.quant.install import PlanApplier
from tests.conftest import ROOT, reference_calibration


def _gptq(**settings):
    return make_backend("gptq", **settings)


def _engine(backend, model, blocks, ids):
    return Engine(backend, lambda: BlockInputs.capture(model, blocks, ids))


def _weights(block) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in block.state_dict().items() if k.endswith("weight")}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def model_and_ids(ref_model):
    model, tokenizer = ref_model
    return model, find_blocks(model), reference_calibration(tokenizer, samples=4, seq_len=64)


def test_block_inputs_carried_block_by_block_are_the_models_own(model_and_ids):
    """Advancing through the original blocks reproduces the hidden states a full forward
    pass feeds the last block, batch by batch."""
    model, blocks, ids = model_and_ids
    seen = []
    handle = blocks[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for start in range(0, len(ids), 2):
            model(input_ids=ids[start : start + 2], use_cache=False)
    handle.remove()
    inputs = BlockInputs.capture(model, blocks, ids, batch_size=2)
    for block in list(blocks)[:-1]:
        inputs.advance(block)
    assert inputs.index == len(blocks) - 1
    assert len(inputs.hidden) == len(seen) == 2
    for ours, theirs in zip(inputs.hidden, seen, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _manual(blocks, ids, model, upto, bits, through):
    """Block `upto` quantized by hand on the inputs `through(j)` (blocks 0..upto-1) give."""
    inputs = BlockInputs.capture(model, blocks, ids)
    for j in range(upto):
        inputs.advance(through(j))
    block = copy.deepcopy(blocks[upto])
    quantize_block(block, _gptq(), bits, inputs)
    return block


@pytest.mark.slow
def test_full_precision_mode_builds_each_block_once_per_width_on_the_models_inputs(
    model_and_ids,
):
    model, blocks, ids = model_and_ids
    originals = list(blocks)
    n = len(blocks)
    backend = _gptq()
    engine = _engine(backend, model, blocks, ids)
    applier = PlanApplier(blocks, engine)
    order = list(range(n))[::-1]
    try:
        for k in (0, 3, 7, n):  # a sweep: high 4, the k last blocks at 2
            applier.apply(two_level_plan(order, k, high=4, low=2))
        assert engine.builds == 2 * n  # each block once at 4 and once at 2 bits
        applier.apply(Plan((2,) * n))
        assert engine.builds == 2 * n  # a new plan reuses them
        installed = blocks[3]
    finally:
        applier.restore()
    assert all(a is b for a, b in zip(blocks, originals, strict=True))
    assert _same(installed, _manual(originals, ids, model, 3, 2, through=lambda j: originals[j]))


@pytest.mark.slow
def test_sequential_mode_calibrates_each_block_on_the_plans_quantized_blocks(model_and_ids):
    model, blocks, ids = model_and_ids
    n = len(blocks)
    backend = _gptq(inputs="sequential")
    applier = PlanApplier(blocks, _engine(backend, model, blocks, ids))
    try:
        applier.apply(Plan((2,) * n))
        installed = list(blocks)
        applier.restore()
        originals = list(blocks)
        # block 0 sees the embeddings either way; block 2 sees quantized blocks 0 and 1
        assert _same(installed[0], _manual(originals, ids, model, 0, 2, lambda j: originals[j]))
        sequential = _manual(originals, ids, model, 2, 2, through=lambda j: installed[j])
        full_precision = _manual(originals, ids, model, 2, 2, through=lambda j: originals[j])
        assert _same(installed[2], sequential)
        assert not _same(installed[2], full_precision)
        # block 1 low under a high block 0 is a different variant from under a low one
        applier.apply(Plan((4,) + (2,) * (n - 1)))
        assert not _same(blocks[1], installed[1])
    finally:
        applier.restore()


def test_a_block_backend_needs_the_inputs_entering_the_block(model_and_ids):
    _, blocks, _ = model_and_ids
    with pytest.raises(LwqError, match="needs the calibration inputs entering block 3"):
        quantize_block(copy.deepcopy(blocks[3]), _gptq(), 4, index=3)
    with pytest.raises(LwqError, match="quant=gptq needs calibration inputs"):
        Engine(_gptq()).first_inputs()


@pytest.mark.parametrize(
    ("setting", "value", "phrase"),
    [
        ("group_size", 48, "multiple of 32"),
        ("group_size", -1, r"0 \(per channel\)"),
        ("inputs", "both", "full_precision, sequential"),
        ("damp_percent", 0.0, r"in \(0, 1\)"),
        ("mse", -1.0, r"0 \(off\) or a norm"),
    ],
)
def test_bad_settings_name_the_fix(setting, value, phrase):
    with pytest.raises(Exception, match=phrase):
        _gptq(**{setting: value})


def _heldout_ppl(model, tokenizer) -> float:
    texts = seeded_subset(chunk_documents(load_texts("ref-heldout", ROOT), 4000), 12, seed=0)
    return perplexity(model, tokenizer, texts, max_length=256).token_perplexity


@pytest.mark.slow
def test_gptq_beats_round_to_nearest_at_3_and_2_bits_on_heldout_text(ref_model):
    """The well-known result, on the reference model: every block at 3 (then 2) bits,
    the same group size; GPTQ calibrated on ref-calib, judged on ref-heldout."""
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    ids = reference_calibration(tokenizer, samples=32, seq_len=256)
    rtn = make_backend("rtn", group_size=128)
    appliers = {
        "gptq": PlanApplier(blocks, _engine(_gptq(group_size=128), model, blocks, ids)),
        "rtn": PlanApplier(blocks, _engine(rtn, model, blocks, ids)),
    }
    ppl = {}
    for bits in (3, 2):
        for name, applier in appliers.items():
            applier.apply(Plan((bits,) * len(blocks)))
            try:
                ppl[name, bits] = _heldout_ppl(model, tokenizer)
            finally:
                applier.restore()
    full = _heldout_ppl(model, tokenizer)
    assert full < ppl["gptq", 3] < ppl["rtn", 3], ppl
    assert full < ppl["gptq", 2] < ppl["rtn", 2], ppl
    assert ppl["gptq", 3] < ppl["gptq", 2], ppl
    # and the gap is no rounding noise: GPTQ removes a good part of RTN's 2-bit damage
    assert ppl["gptq", 2] - full < 0.8 * (ppl["rtn", 2] - full), ppl


def test_16_bit_plans_touch_nothing_and_build_nothing(model_and_ids):
    model, blocks, ids = model_and_ids
    backend = _gptq()
    engine = _engine(backend, model, blocks, ids)
    applier = PlanApplier(blocks, engine)
    before = list(blocks)
    try:
        applier.apply(Plan((FULL_PRECISION,) * len(blocks)))
    finally:
        applier.restore()
    assert engine.builds == 0
    assert all(a is b for a, b in zip(blocks, before, strict=True))


@pytest.mark.slow
def test_calibrated_blocks_are_built_once_and_shared_through_the_store(tmp_path, monkeypatch):
    """A second sweep (another ordering, another process or run) loads the blocks the first
    built from the variant store instead of running GPTQ again, and gets the same numbers."""
    from lwq.commands.sweep import run_sweep
    from lwq.quant.gptq import GPTQBackend
    from tests.conftest import compose_config, records, small_run_overrides

    calls = []
    quantize = GPTQBackend.quantize
    monkeypatch.setattr(
        GPTQBackend, "quantize", lambda *a, **k: calls.append(1) or quantize(*a, **k)
    )
    overrides = [*small_run_overrides(tmp_path), "quant=gptq", "quant.settings.group_size=32"]
    run_sweep(compose_config(*overrides, "sweep.fractions=[0.5]"))
    built = len(calls)
    assert built == 2 * 12  # every block at 4 and at 2 bits, once
    run_sweep(compose_config(*overrides, "sweep.fractions=[0.5]", "metric=zd"))
    assert len(calls) == built  # loaded, not built again
    fresh = tmp_path / "fresh"  # the same zd point built from scratch elsewhere
    run_sweep(
        compose_config(
            *small_run_overrides(fresh),
            "quant=gptq",
            "quant.settings.group_size=32",
            "sweep.fractions=[0.5]",
            "metric=zd",
        )
    )
    assert len(calls) == 2 * built
    stored = [r for r in records(tmp_path) if r.get("metric") == "zd"]
    again = [r for r in records(fresh) if r.get("metric") == "zd"]
    assert stored[0]["eval"]["tasks"] == again[0]["eval"]["tasks"]


def test_true_sequential_groups_linears_by_their_shared_input(model_and_ids):
    """q, k, v read one tensor, o its attention output, gate and up one tensor, down
    their product: four groups, in the order they run, found without knowing names."""
    from lwq.quant.gptq import _call_order

    model, blocks, ids = model_and_ids
    inputs = BlockInputs.capture(model, blocks, ids)
    linears = dict(block_linears(blocks[0]))
    groups, once = _call_order(blocks[0], inputs, linears)
    assert once
    short = [[name.rsplit(".", 1)[-1] for name in group] for group in groups]
    assert short == [
        ["q_proj", "k_proj", "v_proj"],
        ["o_proj"],
        ["gate_proj", "up_proj"],
        ["down_proj"],
    ]


def test_forwards_cut_after_the_group_build_the_same_block(model_and_ids, monkeypatch):
    """Each group's calibration forwards stop once its last linear has read its input:
    the packed block equals the one whole forwards give, bit for bit, with fewer
    linears run."""
    model, blocks, ids = model_and_ids
    feed = BlockInputs.feed
    built, calls = {}, []
    for cut in (True, False):
        if not cut:
            monkeypatch.setattr(
                BlockInputs, "feed", lambda self, block, until=None: feed(self, block)
            )
        inputs = BlockInputs.capture(model, blocks, ids)
        block = copy.deepcopy(blocks[0])
        for _, linear in block_linears(block):
            linear.register_forward_hook(lambda *_, cut=cut: calls.append(cut))
        _gptq().quantize(block, 3, inputs)
        built[cut] = block.state_dict()
    assert built[True].keys() == built[False].keys()
    assert all(torch.equal(built[True][k], built[False][k]) for k in built[True])
    assert 0 < calls.count(True) < calls.count(False)


def test_true_sequential_changes_the_later_groups_only(model_and_ids):
    """The first group (q, k, v) sees the same inputs either way; o, gate, up and down are
    calibrated on the already-quantized ones before them, so they differ."""
    model, blocks, ids = model_and_ids
    built = {}
    for mode in (True, False):
        inputs = BlockInputs.capture(model, blocks, ids)
        block = copy.deepcopy(blocks[0])
        _gptq(true_sequential=mode).quantize(block, 2, inputs)
        packed = [(n, m) for n, m in block.named_modules() if hasattr(m, "dequantize_weight")]
        built[mode] = {n: m.dequantize_weight() for n, m in packed}
    assert len(built[True]) == 7
    for name in built[True]:
        same = torch.equal(built[True][name], built[False][name])
        assert same == name.endswith(("q_proj", "k_proj", "v_proj")), name


def test_dequantized_evaluation_leaves_gptqmodels_compile_out(model_and_ids):
    """lwq dequantizes each packed linear once, so compiling `dequantize_weight` (what
    gptqmodel's `post_init` does, again for every module) only costs time; evaluated packed,
    the library keeps it. The weights are the same either way, bit for bit."""
    model, blocks, ids = model_and_ids
    inputs = BlockInputs.capture(model, blocks, ids)
    weights = {}
    for dequantize in (True, False):
        built = _gptq(eval_dequantized=dequantize).quantize(copy.deepcopy(blocks[0]), 3, inputs)
        packed = [m for m in built.modules() if hasattr(m, "dequantize_weight")]
        assert len(packed) == 7
        compiled = [hasattr(m.dequantize_weight, "_torchdynamo_orig_callable") for m in packed]
        assert compiled == [not dequantize] * 7
        weights[dequantize] = [m.dequantize_weight() for m in packed]
    assert all(torch.equal(a, b) for a, b in zip(*weights.values(), strict=True))


def test_group_size_0_packs_one_scale_and_zero_a_row(model_and_ids):
    """Per output channel (GPTQ's group_size -1): each packed linear holds one scale a row,
    every input column in group 0, the bytes counted are the bytes held, and its weights
    differ from g128's wherever an input is wider than 128."""
    model, blocks, ids = model_and_ids
    inputs = BlockInputs.capture(model, blocks, ids)
    backend = _gptq(group_size=0, eval_dequantized=False)
    built = backend.quantize(copy.deepcopy(blocks[0]), 3, inputs)
    grouped = _gptq(eval_dequantized=False).quantize(copy.deepcopy(blocks[0]), 3, inputs)
    for name, original in block_linears(blocks[0]):
        packed = built.get_submodule(name)
        assert packed.scales.shape == (1, original.out_features), name
        assert not packed.g_idx.any(), name
        assert backend.held_bytes(packed) == backend.weight_bytes(original, 3), name
    down = built.mlp.down_proj.dequantize_weight()
    assert not torch.equal(down, grouped.mlp.down_proj.dequantize_weight())  # 384 wide
    assert backend.checkpoint_settings()["group_size"] == -1


def test_a_mixed_block_packs_each_linear_at_its_width_on_full_precision_inputs(model_and_ids):
    """Block 2 with q, k, v at 2 bits, o left as loaded and the MLP at 4: each quantized
    linear is packed at its own width, calibrated on the inputs the full-precision model
    feeds block 2 (a cursor walks there through the originals), and o is untouched."""
    model, blocks, ids = model_and_ids
    n = len(blocks)
    widths = (2, 2, 2, FULL_PRECISION, 4, 4, 4)
    plan = Plan(tuple(widths if i == 2 else FULL_PRECISION for i in range(n)))
    applier = PlanApplier(blocks, _engine(_gptq(eval_dequantized=False), model, blocks, ids))
    original_o = blocks[2].self_attn.o_proj.weight.detach().clone()
    try:
        applier.apply(plan)
        block = blocks[2]
        got = {
            name.rsplit(".", 1)[-1]: getattr(m, "bits", None)
            for name, m in block.named_modules()
            if name.endswith("_proj")
        }
        assert got == {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": None,
                       "gate_proj": 4, "up_proj": 4, "down_proj": 4}  # fmt: skip
        assert torch.equal(block.self_attn.o_proj.weight, original_o)
        built = copy.deepcopy(block)
    finally:
        applier.restore()
    inputs = BlockInputs.capture(model, blocks, ids)
    for j in range(2):
        inputs.advance(blocks[j])
    by_hand = _gptq(eval_dequantized=False).quantize(copy.deepcopy(blocks[2]), widths, inputs)
    assert _same(built, by_hand)


def test_mixed_variants_beyond_the_cap_are_dropped_and_built_again_alike(
    model_and_ids, monkeypatch
):
    import lwq.quant.engine as engine_module

    monkeypatch.setattr(engine_module, "MIXED_KEPT_PER_BLOCK", 0)  # keep the newest only
    model, blocks, ids = model_and_ids
    n = len(blocks)
    engine = _engine(_gptq(), model, blocks, ids)
    applier = PlanApplier(blocks, engine)
    first = (2, 2, 2, 4, 4, 4, 4)
    try:
        applier.apply(Plan(tuple(first if i == 1 else FULL_PRECISION for i in range(n))))
        built = copy.deepcopy(blocks[1])
        applier.apply(Plan(tuple((4, 4, 4, 2, 2, 2, 2) if i == 1 else 16 for i in range(n))))
        assert len(engine._mixed) == 1 and engine.builds == 2  # the first one was dropped
        applier.apply(Plan(tuple(first if i == 1 else FULL_PRECISION for i in range(n))))
        assert engine.builds == 3 and _same(blocks[1], built)  # rebuilt, the same block
    finally:
        applier.restore()


def test_kept_full_precision_inputs_shorten_the_walks_to_mixed_blocks(model_and_ids):
    """A plan whose mixed block lies behind the cursor (a search's next child) starts at
    the nearest kept inputs, not block 0, and one ahead of it jumps to a kept block past
    the cursor: fewer block forwards, the same blocks."""
    model, blocks, ids = model_and_ids
    n, mixed = len(blocks), (2, 2, 2, 4, 4, 4, 4)
    order = (n - 1, 2, n - 2)  # the block each plan mixes: forward, back, forward
    built, walked = {}, {}
    for room in (0, n, 4, 0.5):  # blocks' inputs the memory holds: none, all, 4, none
        engine = _engine(_gptq(), model, blocks, ids)
        engine._keep_bytes = int(room * sum(h.nbytes for h in engine.first_inputs().hidden))
        applier = PlanApplier(blocks, engine)
        built[room] = []
        for at in order:
            applier.apply(Plan(tuple(mixed if i == at else FULL_PRECISION for i in range(n))))
            built[room].append(_weights(blocks[at]))
            applier.restore()
        walked[room] = engine.walked
    assert walked[0] == walked[0.5] == (n - 1) + 2 + (n - 4)  # 0 -> 2, then 2 -> n-2
    assert walked[n] == n - 1  # every block's inputs kept on the first walk
    stride = -(-(n - 1) // 4)
    assert walked[4] == (n - 1) + 2 + (n - 2) % stride  # from the last kept block
    for room in (n, 4, 0.5):
        for a, b in zip(built[0], built[room], strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kept_inputs_are_spread_as_far_as_their_memory_allows(model_and_ids):
    model, blocks, ids = model_and_ids
    engine = _engine(_gptq(), model, blocks, ids)
    inputs = engine.first_inputs()
    per_block = sum(h.nbytes for h in inputs.hidden)
    n = len(blocks)
    for room, stride in ((0, n), (1, n - 1), (2, -(-(n - 1) // 2)), (n - 1, 1), (10 * n, 1)):
        engine._keep_bytes = room * per_block
        assert engine._stride(inputs) == stride, room
        assert len(range(stride, n, stride)) <= room  # never more than the memory holds


def test_a_mixed_block_takes_the_leading_groups_an_earlier_variant_shares(
    model_and_ids, monkeypatch
):
    """Widths that differ from a kept variant's only in down_proj: q/k/v, o and gate/up
    come from that variant, bit for bit what GPTQ would compute again; only down_proj
    is quantized (a search's child mostly changes a linear or two)."""
    model, blocks, ids = model_and_ids
    n = len(blocks)
    packs = []
    pack = GPTQBackend._pack
    monkeypatch.setattr(
        GPTQBackend, "_pack", lambda self, task, bits: packs.append(bits) or pack(self, task, bits)
    )
    first, second, third = (2, 2, 2, 4, 4, 4, 4), (2, 2, 2, 4, 4, 4, 2), (4, 4, 4, 2, 2, 2, 2)
    built = {}
    for reuse in (True, False):
        engine = _engine(_gptq(), model, blocks, ids)
        applier = PlanApplier(blocks, engine)
        packs.clear()
        for widths in (first, second, third):
            if not reuse:
                engine._kept.clear()
            applier.apply(Plan(tuple(widths if i == 1 else FULL_PRECISION for i in range(n))))
            built[reuse, widths] = _weights(blocks[1])
            applier.restore()
        built[reuse, "packs"] = list(packs)
    assert built[False, "packs"] == [*first, *second, *third]
    assert built[True, "packs"] == [*first, 2, *third]  # nothing kept has third's q, k, v
    for widths in (first, second, third):
        a, b = built[True, widths], built[False, widths]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), widths
