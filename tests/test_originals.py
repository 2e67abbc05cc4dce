"""Originals parked on disk: dropped from memory between uses, read back bit for bit, and
a model loaded from a memory-mapped checkpoint holds its weights in its own memory."""

from __future__ import annotations

import copy

import torch

from lwq.modeling.load import _file_mappings, load_model, own_memory
from lwq.plan import Plan, two_level_plan
from lwq.quant import make_backend
from lwq.quant.engine import Engine
from lwq.quant.install import PlanApplier
from lwq.quant.originals import InMemory, OnDisk
from tests.conftest import REF_MODEL
from tests.shrunk import shrunk_model


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _applier(blocks, parked, backend=None):
    return PlanApplier(blocks, Engine(backend or make_backend("rtn", group_size=32)), False, parked)


def _held_bytes(block) -> int:
    """Bytes of the storages under a block's tensors (a parked one keeps one element)."""
    tensors = (*block.parameters(), *block.buffers())
    return sum(t.untyped_storage().nbytes() for t in tensors) if tensors else 0


def _parked(block) -> bool:
    return _held_bytes(block) <= 16 * len([*block.parameters(), *block.buffers()])


def test_a_sweep_with_originals_on_disk_equals_one_in_memory_and_restores_exactly(tmp_path):
    model = shrunk_model("llama", blocks=6)
    twin = copy.deepcopy(model)
    before = _state(model)
    on_disk = _applier(model.model.layers, OnDisk(tmp_path))
    in_memory = _applier(twin.model.layers, InMemory())
    ids = torch.arange(3, 40).unsqueeze(0)
    order = [4, 1, 5, 0, 2, 3]
    for k in (0, 3, 6, 2):
        plan = two_level_plan(order, k, high=4, low=2)
        on_disk.apply(plan)
        in_memory.apply(plan)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, twin(input_ids=ids).logits)
    parked = on_disk._originals
    assert sorted(parked) == list(range(6))
    assert all(_parked(block) for block in parked.values())  # one element a tensor
    shapes = {n: p.shape for n, p in twin.model.layers[0].named_parameters()}
    assert {n: p.shape for n, p in parked[0].named_parameters()} == shapes  # sizes still read
    assert on_disk.quantize_calls == in_memory.quantize_calls
    on_disk.restore()
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before
    )
    # read back once per variant built after the first plan (3 + 3 + 4) and to restore (6)
    assert on_disk.parked.reads == 3 + 3 + 4 + 6


def test_a_block_original_is_dropped_as_soon_as_its_variant_is_installed(tmp_path):
    """Holding every original until a plan is installed would hold the model twice."""
    model = shrunk_model("llama", blocks=4)
    parked = OnDisk(tmp_path)
    applier = _applier(model.model.layers, parked)
    seen = []
    install = applier._variant

    def watch(i, plan):
        seen.append(sum(not _parked(b) for b in applier._originals.values()))
        return install(i, plan)

    applier._variant = watch
    applier.apply(Plan((2, 2, 2, 2)))
    assert seen == [0, 0, 0, 0]  # no earlier block's original is resident any more


def test_gptq_builds_from_parked_originals_as_from_originals_in_memory(tmp_path, ref_model):
    """A block backend's walk reads every original back; the blocks it builds are the same."""
    from tests.conftest import reference_calibration

    model, tokenizer = ref_model
    from lwq.modeling.blocks import find_blocks
    from lwq.modeling.capture import BlockInputs

    calibration = reference_calibration(tokenizer, samples=4, seq_len=64)
    outputs = []
    for parked in (OnDisk(tmp_path), InMemory()):
        work = copy.deepcopy(model)
        blocks = find_blocks(work)
        engine = Engine(
            make_backend("gptq", group_size=32),
            lambda w=work, b=blocks: BlockInputs.capture(w, b, calibration, 4),
        )
        applier = PlanApplier(blocks, engine, False, parked)
        applier.apply(two_level_plan(list(range(len(blocks))), 5, high=4, low=2))
        with torch.no_grad():
            outputs.append(work(input_ids=calibration[:2]).logits)
    assert torch.equal(outputs[0], outputs[1])


def test_a_shared_tensor_in_use_elsewhere_is_not_dropped(tmp_path):
    model = shrunk_model("llama", blocks=2)
    blocks = model.model.layers
    shared = blocks[1].input_layernorm.weight
    blocks[0].input_layernorm.weight = shared  # block 0's original shares block 1's norm
    applier = _applier(blocks, OnDisk(tmp_path))
    applier.apply(Plan((2, 16)))  # block 1 stays as loaded, so its norm is in use
    assert torch.isfinite(blocks[1].input_layernorm.weight).all()  # still its values
    assert blocks[1].input_layernorm.weight.untyped_storage().nbytes() == 4 * shared.numel()
    original = applier._originals[0]
    others = [t for t in (*original.parameters(), *original.buffers()) if t is not shared]
    assert _held_bytes(original) == 4 * shared.numel() + 4 * len(others)  # the rest parked


def test_the_scratch_folder_goes_with_its_owner(tmp_path):
    parked = OnDisk(tmp_path)
    block = torch.nn.Linear(4, 4)
    parked.park(0, block)
    folder = parked.folder
    assert (folder / "0.safetensors").is_file() and block.weight.untyped_storage().nbytes() == 4
    assert block.weight.shape == (4, 4) and block.weight.isnan().all()  # used by mistake: NaN
    parked.load(0, block)
    assert block.weight.shape == (4, 4) and torch.isfinite(block.weight).all()
    del parked
    assert not folder.exists()


def test_a_loaded_checkpoint_holds_its_weights_in_its_own_memory():
    model, _ = load_model(str(REF_MODEL), dtype=torch.float32, device=torch.device("cpu"))
    spans = _file_mappings()
    mapped = [
        name
        for name, t in model.state_dict().items()
        if any(a <= t.data_ptr() < b for a, b in spans)
    ]
    assert mapped == []
    from safetensors.torch import load_file

    saved = load_file(str(REF_MODEL / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)
    assert own_memory(model) == 0  # nothing left to copy


def test_a_mapped_tensor_is_copied_piece_by_piece_exactly(tmp_path):
    from safetensors.torch import load_file, save_file

    from lwq.modeling.load import _copied

    save_file({"w": torch.randn(1000, 300)}, str(tmp_path / "w.safetensors"))
    mapped = load_file(str(tmp_path / "w.safetensors"))["w"]
    copy = _copied(mapped, piece_bytes=4096 * 7)  # pieces straddling pages
    assert torch.equal(copy, load_file(str(tmp_path / "w.safetensors"))["w"])
    assert copy.data_ptr() != mapped.data_ptr()
