"""Pruning: the model still runs and generates; its size falls by exactly those blocks."""

import pytest
import torch

from lwq.errors import LwqError
from lwq.evaluation.perplexity import perplexity
from lwq.models import find_blocks
from lwq.prune import blocks_removed
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


def test_pruned_model_matches_a_model_built_without_those_blocks(ref_model):
    model, tokenizer = ref_model
    blocks = find_blocks(model)
    text = ["def add(a, b):\n    return a + b\n" * 20]
    with blocks_removed(model, blocks, [3, 7]):
        ppl_pruned = perplexity(model, tokenizer, text, max_length=64).token_perplexity
        kept = list(blocks)
    full = perplexity(model, tokenizer, text, max_length=64).token_perplexity
    assert ppl_pruned != full
    assert kept[0] is blocks[0] and kept[3] is blocks[4]  # order of the survivors


def test_bad_removals_are_refused():
    model = shrunk_model("llama", blocks=3)
    blocks = find_blocks(model)
    with pytest.raises(LwqError, match="distinct indices"), blocks_removed(model, blocks, [5]):
        pass
    with pytest.raises(LwqError, match="every block"), blocks_removed(model, blocks, [0, 1, 2]):
        pass
