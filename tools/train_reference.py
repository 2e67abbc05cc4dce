"""Train the embedded reference model `ref-tiny` deterministically (`make reference-model`).

A 12-block Llama-architecture causal LM of about 3M parameters, trained on the train split
of the standard-library corpus (`lwq.reference.corpus`) with a byte-level BPE tokenizer
trained on the same split. Every linear layer's sizes are multiples of 64, so every
quantizer backend (bitsandbytes' 4-bit CPU path needs multiples of 32) can handle it.

Determinism: fixed seeds, a fixed step count (never a time budget) and a fixed number of
torch threads; on the same CPU kind the weights come out bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.nn import functional as F
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lwq.evaluation.perplexity import perplexity
from lwq.reference.corpus import load_split

SPECIAL = "<|endoftext|>"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob that changes the weights; saved next to them in `card.json`."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    blocks: int = 12
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as in Llama-3 and Mistral
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1  # one thread: immune to a busy machine, and bit-reproducible


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every byte is representable, so no text is ever <unk>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL
    )


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.blocks,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def token_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All texts as one 1-D id tensor, each text preceded by the separator token."""
    ids: list[int] = []
    for text in texts:
        ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_loop(model, stream: torch.Tensor, cfg: TrainConfig) -> list[float]:
    """AdamW on random windows of the stream; returns the loss of every step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="train ref-tiny", unit="step")
    for step in bar:
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + cfg.seq_len + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits = model(input_ids=batch[:, :-1]).logits  # (B, S, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def unigram_perplexity(train: torch.Tensor, texts: list[str], tokenizer, vocab: int) -> float:
    """Add-one smoothed unigram model from the train stream, scored on the same tokens."""
    counts = Counter(train.tolist())
    total = len(train) + vocab
    nll, n = 0.0, 0
    for text in texts:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            nll -= math.log((counts.get(token, 0) + 1) / total)
            n += 1
    return math.exp(nll / n)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out_dir: Path, cfg: TrainConfig) -> dict:
    """Train tokenizer and model, save them (fp16 safetensors) and a card with the numbers."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    started = time.time()
    train_texts = [d.text for d in load_split("train")]
    heldout_texts = [d.text for d in load_split("heldout")]
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    stream = token_stream(train_texts, tokenizer)
    model = build_model(cfg, tokenizer)
    losses = train_loop(model, stream, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    saved = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    ppl = perplexity(saved, tokenizer, heldout_texts, max_length=cfg.seq_len, batch_size=16)
    card = {
        "train_config": asdict(cfg),
        "parameters": sum(p.numel() for p in saved.parameters()),
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "train_stream_tokens": len(stream),
        "final_train_loss": sum(losses[-50:]) / len(losses[-50:]),
        "heldout_documents": len(heldout_texts),
        "heldout_tokens": ppl.tokens,
        "heldout_perplexity": ppl.token_perplexity,
        "unigram_heldout_perplexity": unigram_perplexity(
            stream, heldout_texts, tokenizer, cfg.vocab_size
        ),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "train_seconds": round(time.time() - started, 1),
        "weights_sha256": sha256(out_dir / "model.safetensors"),
    }
    card["perplexity_ratio"] = card["heldout_perplexity"] / card["unigram_heldout_perplexity"]
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/ref-tiny"))
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    args = parser.parse_args(argv)
    card = build(args.out, TrainConfig(steps=args.steps))
    print(json.dumps({k: v for k, v in card.items() if k != "train_config"}, indent=2))


if __name__ == "__main__":
    main()
