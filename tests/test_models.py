"""Contracts of lwq.modeling on shrunk random models of every supported family."""

from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from lwq.errors import LwqError
from lwq.modeling.blocks import (
    UnsupportedModelError,
    block_linears,
    count_parameters,
    find_blocks,
    input_dim,
)
from lwq.modeling.load import ModelNotFoundError, load_model
from tests.shrunk import shrunk_from_conf, shrunk_model

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
CONF_FILES = sorted(CONF_DIR.glob("*.yaml"))
PAPER_MODELS = ["llama2-7b", "llama2-13b", "mistral-7b", "qwen-7b", "qwen1.5-1.8b", "llama3-8b"]
CONF_KEYS = {
    "name",
    "path",
    "revision",
    "trust_remote_code",
    "gguf_file",
    "dtype",
    "model_type",
    "shrink_as",
    "blocks",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "calib_text",
    "eval_text",
}

# family -> (decoder block class, weight layers per block)
FAMILIES = {
    "llama": ("LlamaDecoderLayer", 7),
    "mistral": ("MistralDecoderLayer", 7),
    "qwen2": ("Qwen2DecoderLayer", 7),
    "gemma": ("GemmaDecoderLayer", 7),
    "phi": ("PhiDecoderLayer", 6),
    "phi3": ("Phi3DecoderLayer", 4),  # fused qkv_proj and gate_up_proj
    "gpt2": ("GPT2Block", 4),  # Conv1D: c_attn, c_proj, c_fc, mlp.c_proj
    "opt": ("OPTDecoderLayer", 6),
    "gpt_neox": ("GPTNeoXLayer", 4),
    "falcon": ("FalconDecoderLayer", 4),
}


@pytest.fixture(scope="module")
def llama():
    return shrunk_model("llama")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with no pad token, small enough for the shrunk vocab."""
    words = ["<unk>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


@pytest.mark.parametrize("family", FAMILIES)
def test_find_blocks_every_family(family):
    model = shrunk_model(family, blocks=3)
    blocks = find_blocks(model)
    assert isinstance(blocks, nn.ModuleList)
    assert len(blocks) == 3
    assert {type(b).__name__ for b in blocks} == {FAMILIES[family][0]}


@pytest.mark.parametrize("family", FAMILIES)
def test_block_linears_count_and_input_dim(family):
    model = shrunk_model(family, blocks=2)
    block = find_blocks(model)[1]
    linears = block_linears(block)
    assert len(linears) == FAMILIES[family][1], [name for name, _ in linears]
    names = [name for name, _ in linears]
    assert names == [n for n, m in block.named_modules() if m in dict(linears).values()]
    for name, module in linears:
        features = module.weight.shape[input_dim(module)]
        expected = module.nx if family == "gpt2" else module.in_features
        assert features == expected, name
        out = module(torch.randn(3, features))  # the layer accepts exactly that many inputs
        assert out.shape[0] == 3


def test_gpt2_layers_are_conv1d_with_input_dim_0():
    block = find_blocks(shrunk_model("gpt2", blocks=1))[0]
    kinds = {type(m).__name__ for _, m in block_linears(block)}
    assert kinds == {"Conv1D"}
    assert all(input_dim(m) == 0 for _, m in block_linears(block))


@pytest.mark.parametrize("conf_path", CONF_FILES, ids=lambda p: p.stem)
def test_conf_file_keys_and_shapes(conf_path):
    conf = yaml.safe_load(conf_path.read_text())
    assert set(conf) >= CONF_KEYS, f"missing keys: {CONF_KEYS - set(conf)}"
    assert conf["name"] == conf_path.stem
    assert conf["dtype"] in {"auto", "float32", "bfloat16", "float16"}
    assert conf["hidden_size"] % conf["num_attention_heads"] == 0
    assert conf["num_attention_heads"] % conf["num_key_value_heads"] == 0
    assert isinstance(conf["trust_remote_code"], bool)


def test_every_paper_model_has_a_conf_file():
    assert {p.stem for p in CONF_FILES} >= set(PAPER_MODELS)


@pytest.mark.parametrize("conf_path", CONF_FILES, ids=lambda p: p.stem)
def test_shrunk_conf_model_keeps_family_and_gqa_ratio(conf_path):
    conf = yaml.safe_load(conf_path.read_text())
    model = shrunk_from_conf(conf_path)
    assert model.config.model_type == conf["shrink_as"]
    ratio = conf["num_attention_heads"] // conf["num_key_value_heads"]
    assert model.config.num_attention_heads // model.config.num_key_value_heads == ratio
    blocks = find_blocks(model)
    assert len(blocks) == 4
    assert type(blocks[0]).__name__ == FAMILIES[conf["shrink_as"]][0]
    assert len(block_linears(blocks[0])) == FAMILIES[conf["shrink_as"]][1]


def test_extra_modulelist_of_other_class_is_ignored(llama):
    model = copy.deepcopy(llama)
    model.extra_linears = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
    model.extra_mixed = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)), nn.Identity()] * 2)
    model.extra_norms = nn.ModuleList(nn.LayerNorm(4) for _ in range(4))
    assert find_blocks(model) is model.model.layers


def test_two_candidate_lists_raise(llama):
    model = copy.deepcopy(llama)
    model.shadow = copy.deepcopy(model.model.layers)
    with pytest.raises(UnsupportedModelError) as info:
        find_blocks(model)
    message = str(info.value)
    assert "LlamaForCausalLM" in message and "model.layers" in message and "shadow" in message
    assert "\n" not in message


def test_no_candidate_list_raises_and_lists_what_it_found(llama):
    model = copy.deepcopy(llama)
    model.config.num_hidden_layers = 5
    with pytest.raises(UnsupportedModelError, match=r"model\.layers \(4 x LlamaDecoderLayer\)"):
        find_blocks(model)


def test_errors_are_one_line_lwq_errors_of_the_usual_types():
    # run.py prints LwqError as one line; callers may still catch the builtin types
    assert issubclass(UnsupportedModelError, LwqError)
    assert issubclass(UnsupportedModelError, ValueError)
    assert issubclass(ModelNotFoundError, LwqError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_model_without_config_raises():
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_unknown_2d_weight_in_block_raises(llama):
    block = copy.deepcopy(find_blocks(llama)[0])
    block.mlp.lookup = nn.Embedding(8, 4)
    with pytest.raises(UnsupportedModelError, match=r"mlp\.lookup\.weight.*Embedding"):
        block_linears(block)


def test_block_without_linears_raises():
    with pytest.raises(UnsupportedModelError, match="no nn.Linear"):
        block_linears(nn.Sequential(nn.LayerNorm(8), nn.GELU()))


def test_input_dim_rejects_other_modules():
    with pytest.raises(UnsupportedModelError):
        input_dim(nn.Embedding(4, 4))


def test_count_parameters_counts_tied_weights_once():
    model = shrunk_model("gpt2", blocks=1)  # gpt2 ties lm_head to the token embedding
    unique = {id(p): p.numel() for p in model.state_dict(keep_vars=True).values()}
    assert count_parameters(model) == sum(unique.values())
    assert count_parameters(nn.Linear(3, 5)) == 3 * 5 + 5


def test_shrunk_model_is_deterministic_per_seed():
    a, b, c = shrunk_model("llama"), shrunk_model("llama"), shrunk_model("llama", seed=1)
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_model_round_trips_a_saved_model(tmp_path, family):
    model = shrunk_model(family, blocks=2)
    tokenizer = tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(
        str(tmp_path), dtype=torch.float32, device=torch.device("cpu")
    )
    assert not loaded.training
    assert loaded_tokenizer.pad_token == "</s>"
    ids = torch.tensor([loaded_tokenizer("the cat sat on a mat")["input_ids"]])
    assert ids.shape[1] == 6
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_load_model_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(missing), dtype=torch.float32, device=torch.device("cpu"))
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_model_offline_says_not_cached(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="not in the local cache") as info:
        load_model("lwq-tests/not-a-cached-model", dtype=torch.float32, device=torch.device("cpu"))
    assert "model.path" in str(info.value)
    assert "\n" not in str(info.value)


def test_pickle_weights_load_only_when_the_user_opts_in(tmp_path):
    """A checkpoint with only a .bin (pickle) file is refused; allow_pickle loads it."""
    model = shrunk_model("llama", blocks=2)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # transformers 5 writes none
    tiny_tokenizer().save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors")) and list(tmp_path.glob("*.bin"))
    options = {"dtype": torch.float32, "device": torch.device("cpu")}
    with pytest.raises(ModelNotFoundError, match="no safetensors weights.*allow_pickle=true"):
        load_model(str(tmp_path), **options)
    loaded, _ = load_model(str(tmp_path), allow_pickle=True, **options)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
