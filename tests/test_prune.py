"""Pruning: the model still runs and generates; its size falls by exactly those blocks, and it
computes what a model built without them computes."""

import copy
import re

import pytest
import torch

from lwq.errors import LwqError
from lwq.evaluation.perplexity import perplexity
from lwq.modeling.blocks import find_blocks
from lwq.modeling.prune import blocks_removed
from tests.shrunk import FAMILIES, shrunk_model


def _block_params(block):
    return sum(p.numel() for p in block.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_blocks_leave_a_working_smaller_model(family):
    model = shrunk_model(family, blocks=4)
    blocks = find_blocks(model)
    total = sum(p.numel() for p in model.parameters())
    removed = [2, 0]
    expected = total - sum(_block_params(blocks[i]) for i in removed)
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with blocks_removed(model, blocks, removed):
            assert len(find_blocks(model)) == 2
            assert sum(p.numel() for p in model.parameters()) == expected
            pruned = model(input_ids=ids).logits
            out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
            assert out.shape == (1, 16)
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, pruned)
    assert torch.equal(before, after)  # restored exactly
    assert sum(p.numel() for p in model.parameters()) == total


def _built_without(model, removed: list[int]):
    """An independent model of the same family with `num_hidden_layers` set to the number
    of kept blocks and the kept blocks' weights loaded into it by their new indices."""
    config = copy.deepcopy(model.config)
    n = config.num_hidden_layers
    keep = [i for i in range(n) if i not in removed]
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    fresh = type(model)(config).eval()
    blocks = find_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    state = {}
    for name, value in model.state_dict().items():
        match = re.match(rf"({re.escape(prefix)}\.)(\d+)(\..*)", name)
        if match is None:
            state[name] = value
        elif int(match.group(2)) in keep:
            new_index = keep.index(int(match.group(2)))
            state[f"{match.group(1)}{new_index}{match.group(3)}"] = value
    fresh.load_state_dict(state, strict=True)
    return fresh


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_pruned_model_equals_a_model_built_without_those_blocks(family):
    model = shrunk_model(family, blocks=5)
    removed = [3, 1]
    twin = _built_without(model, removed)
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), blocks_removed(model, find_blocks(model), removed):
        torch.testing.assert_close(model(input_ids=ids).logits, twin(input_ids=ids).logits)
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
        expected = twin.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, uncached)  # the KV cache is indexed by the kept blocks
    assert torch.equal(cached, expected)


def test_pruning_the_reference_model_keeps_the_survivors_in_order(ref_model):
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    text = ["def add(a, b):\n    return a + b\n" * 20]
    full = perplexity(model, tokenizer, text, max_length=64).token_perplexity
    with blocks_removed(model, blocks, [3, 7]):
        kept = list(blocks)
        pruned = perplexity(model, tokenizer, text, max_length=64).token_perplexity
    assert len(kept) == 10 and kept[3] is blocks[4] and kept[6] is blocks[8]
    assert pruned > full  # removing blocks of a trained model costs quality
    assert perplexity(model, tokenizer, text, max_length=64).token_perplexity == full


def test_bad_removals_are_refused():
    model = shrunk_model("llama", blocks=3)
    blocks = find_blocks(model)
    with pytest.raises(LwqError, match="distinct indices"), blocks_removed(model, blocks, [5]):
        pass
    with pytest.raises(LwqError, match="every block"), blocks_removed(model, blocks, [0, 1, 2]):
        pass
