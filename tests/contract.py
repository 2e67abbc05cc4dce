"""The quantizer contract as reusable checks: every registered backend runs them
(tests/test_backends.py), and so does a backend a test defines (tests/test_toy_backend.py).

What a backend must hold to, on a real block: the bytes planned from shapes are the bytes
its installed modules hold; the output error falls as bits rise and is small at 8 bits;
16 bits changes nothing; a shape it cannot handle is refused naming the module; the applier
installs and restores it; a two-point sweep records its true sizes. The model each check
runs on and the backend's own cases come from its `contract` (lwq.quant.base.ContractCase).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from lwq.commands.sweep import run_sweep
from lwq.errors import LwqError
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.capture import BlockInputs
from lwq.plan import Plan
from lwq.quant import BACKENDS, make_backend
from lwq.quant.base import FULL_PRECISION, LINEAR
from lwq.quant.cost import SizeTable
from lwq.quant.engine import Engine, quantize_block
from lwq.quant.install import PlanApplier
from lwq.results.store import RecordStore
from tests.conftest import CONF, REF_MODEL, compose_config, reference_calibration
from tests.shrunk import shrunk_model

REF_TINY_WIDTH = 128
PROBED_BLOCK = {REF_TINY_WIDTH: 5}  # a middle block of ref-tiny; block 1 of a shrunk model


@dataclass
class Probe:
    """A model, one of its blocks on a real input (and its output), and the calibration
    inputs entering that block."""

    model: torch.nn.Module
    blocks: torch.nn.ModuleList
    index: int
    args: tuple
    kwargs: dict
    reference: torch.Tensor
    calibration: torch.Tensor
    inputs: BlockInputs

    @property
    def block(self) -> torch.nn.Module:
        return self.blocks[self.index]

    def run(self, block: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = block(*self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


@cache
def probe(width: int) -> Probe:
    """ref-tiny at its own width, else a random 4-block Llama `width` wide."""
    if width == REF_TINY_WIDTH:
        model = AutoModelForCausalLM.from_pretrained(REF_MODEL, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(REF_MODEL)
        text = "def quantize(module, bits):\n    return module\n" * 4
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        calibration = reference_calibration(tokenizer)
    else:
        model = shrunk_model("llama", hidden_size=width, blocks=4)
        rng = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=rng)
        calibration = torch.randint(0, model.config.vocab_size, (8, 64), generator=rng)
    blocks = find_blocks(model)
    index = PROBED_BLOCK.get(width, 1)
    seen = {}
    handle = blocks[index].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.setdefault("call", (args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    args, kwargs = seen["call"]
    inputs = BlockInputs.capture(model, blocks, calibration)
    for block in list(blocks)[:index]:
        inputs.advance(block)
    probed = Probe(model, blocks, index, args, kwargs, torch.empty(0), calibration, inputs)
    probed.reference = probed.run(probed.block)
    return probed


def configured(name: str, **overrides):
    """The backend as `quant=<name>` configures it (its conf file's settings, if any), with
    the settings its contract asks for the block checks."""
    conf = CONF / "quant" / f"{name}.yaml"
    settings = yaml.safe_load(conf.read_text())["settings"] if conf.exists() else {}
    contract = BACKENDS.get(name).contract.settings
    return make_backend(name, **{**(settings or {}), **contract, **overrides})


def is_slow(name: str) -> bool:
    """A backend that calibrates (GPTQ) runs for seconds a block."""
    return BACKENDS.get(name).unit != LINEAR


def snr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    noise = (output - reference).float().pow(2).sum()
    return 10 * math.log10(reference.float().pow(2).sum() / noise)


def quantized(backend, block: torch.nn.Module, bits: int, inputs: BlockInputs):
    """A copy of `block` quantized the way a sweep does it."""
    return quantize_block(copy.deepcopy(block), backend, bits, inputs)


def widths(backend) -> list[int]:
    return sorted(backend.supported_bits - {FULL_PRECISION})


def check_planned_bytes_are_held(backend) -> None:
    p = probe(backend.contract.width)
    for bits in widths(backend):
        block = quantized(backend, p.block, bits, p.inputs)
        for name, original in block_linears(p.block):
            held = backend.held_bytes(block.get_submodule(name))
            assert backend.weight_bytes(original, bits) == held, (bits, name)
            assert held < backend.weight_bytes(original, FULL_PRECISION), (bits, name)


def check_error_falls_as_bits_rise(backend) -> None:
    p = probe(backend.contract.width)
    snr = {
        b: snr_db(p.reference, p.run(quantized(backend, p.block, b, p.inputs)))
        for b in widths(backend)
    }
    values = list(snr.values())
    assert all(lo < hi for lo, hi in zip(values, values[1:], strict=False)), snr
    if 8 in snr:
        assert snr[8] > backend.contract.snr_8_bits_db, snr


def check_16_bits_is_the_identity(backend) -> None:
    p = probe(backend.contract.width)
    block = quantized(backend, p.block, FULL_PRECISION, p.inputs)
    for name, original in block_linears(p.block):
        installed = block.get_submodule(name)
        assert type(installed) is type(original)
        assert torch.equal(installed.weight, original.weight)
        assert backend.held_bytes(installed) == backend.weight_bytes(original, FULL_PRECISION)
    assert torch.equal(p.run(block), p.reference)


def check_an_unhandled_shape_names_the_module(backend) -> None:
    case = backend.contract
    block = torch.nn.Module()
    block.proj = case.unhandled()
    bits, phrase = case.unhandled_bits, case.unhandled_phrase
    if backend.unit == LINEAR:
        with pytest.raises(LwqError, match=phrase):
            backend.quantize(block.proj, bits)
        if not isinstance(block.proj, torch.nn.Linear):
            return  # not a linear: a block's walk never hands it over
    inputs = BlockInputs([torch.randn(1, 4, block.proj.weight.shape[1])], [[{}]])
    with pytest.raises(LwqError, match=f"block 7 .*{phrase}"):
        quantize_block(block, backend, bits, inputs, index=7)


def check_the_applier_installs_counts_and_restores(backend) -> None:
    p = probe(backend.contract.width)
    model, blocks = p.model, p.blocks
    original = blocks[0]
    before = {k: v.clone() for k, v in original.state_dict().items()}
    sizes = SizeTable(model, blocks, backend)  # from the model as loaded
    applier = PlanApplier(
        blocks, Engine(backend, lambda: BlockInputs.capture(model, blocks, p.calibration))
    )
    full = Plan((FULL_PRECISION,) * len(blocks))
    plan = Plan((min(widths(backend)),) + full.bits[1:])
    try:  # a shared model: put back whatever happens
        applier.apply(plan)
        assert blocks[0] is not original
        held = sum(
            backend.held_bytes(blocks[0].get_submodule(n)) for n, _ in block_linears(original)
        )
        assert sizes.cost(plan).block_bytes[0] == held
        assert sizes.cost(plan).weight_bytes < sizes.cost(full).weight_bytes
    finally:
        applier.restore()
    assert blocks[0] is original
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in before.items())


def _dotted(prefix: str, node) -> list[str]:
    if isinstance(node, dict):
        return [o for k, v in node.items() for o in _dotted(f"{prefix}.{k}", v)]
    return [f"{prefix}={node}"]


def check_a_two_point_sweep_records_true_sizes(name: str, tmp_path: Path) -> None:
    """`quant=<name>` from 0 to 100 % low blocks on ref-tiny: the records' bits and bytes."""
    case = BACKENDS.get(name).contract
    high, low = case.sweep_bits
    results = tmp_path / "results"
    run_sweep(
        compose_config(
            f"model.path={REF_MODEL}",
            f"paths.results={results}",
            "tracking=none",
            "eval.limit=3",
            "eval.chunk_chars=1500",
            "calib.samples=4",
            "calib.seq_len=64",
            f"quant={name}",
            "sweep.fractions=[0,1]",
            f"sweep.high={high}",
            f"sweep.low={low}",
            *_dotted("quant.settings", case.sweep_settings),
        )
    )
    records = RecordStore(results / "ref-tiny" / "records.jsonl").read()
    points = sorted((r for r in records if r["kind"] == "quantized"), key=lambda r: r["k"])
    assert [r["avg_bits"] for r in points] == [high, low]
    assert points[0]["weight_bytes"] > points[1]["weight_bytes"]
    for r in points:
        assert r["config"]["quant"]["name"] == name
        assert r["quant"]["name"] == name
        assert r["bits_per_weight"] > r["avg_bits"]  # scales and zero points cost bits
        assert math.isfinite(r["eval"]["cross_check"]["token_perplexity"])
        for phase in ("quantize_memory", "eval_memory"):
            assert r[phase]["peak_bytes"] > 0, phase


CHECKS = [
    check_planned_bytes_are_held,
    check_error_falls_as_bits_rise,
    check_16_bits_is_the_identity,
    check_an_unhandled_shape_names_the_module,
    check_the_applier_installs_counts_and_restores,
]
