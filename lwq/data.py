"""Text for calibration and perplexity: named sources, pieces, seeded subsets and windows.

Named sources, resolved the same way everywhere:
- `ref-train`, `ref-calib`, `ref-heldout`: splits of the standard-library corpus that
  the embedded reference model was trained on (lwq.reference.corpus).
- `wikitext2-test`: the local WikiText-2 raw test file under the data directory
  (`paths.data`, env LWQ_DATA), split into its articles.
- `wikitext2-test-calib`, `wikitext2-test-heldout`: the articles of that same local file
  split, with a fixed seed, into a calibration quarter and an evaluation rest that share
  no article (only WikiText-2 test is local; a model calibrated and evaluated on it must
  never see its evaluation text during calibration).
- `wikitext2-train`: the hub data set `Salesforce/wikitext` (needs internet or a cached copy).
- `file:<path>`: one local UTF-8 text file.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from lwq.errors import LwqError
from lwq.reference.corpus import SPLITS, load_split

WIKITEXT_TEST = "wikitext-2-raw/wiki.test.raw"
WIKITEXT_SPLITS = ("wikitext2-test-calib", "wikitext2-test-heldout")
WIKITEXT_SPLIT_SEED = 0  # which articles calibrate: fixed, so every run splits the same way
NAMED_SOURCES = (
    *(f"ref-{split}" for split in SPLITS),
    "wikitext2-test",
    *WIKITEXT_SPLITS,
    "wikitext2-train",
)
_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")


def check_text_source(source: str, key: str) -> None:
    """Refuse an unknown source name, or a `file:` source whose file is missing, naming `key`."""
    if isinstance(source, str) and source.startswith("file:"):
        path = Path(source.removeprefix("file:")).expanduser()
        if not path.is_file():
            raise LwqError(f"{key}={source}: no such file; give file:<path to a UTF-8 text>")
        return
    if source not in NAMED_SOURCES:
        raise LwqError(
            f"{key}={source} is not a text source; use {', '.join(NAMED_SOURCES)} or file:<path>"
        )


def source_files(source: str, data_dir: Path) -> list[Path]:
    """The local files a source reads ([] for the stdlib corpus and the hub)."""
    if source == "wikitext2-test" or source in WIKITEXT_SPLITS:
        return [Path(data_dir) / WIKITEXT_TEST]
    if source.startswith("file:"):
        return [Path(source.removeprefix("file:")).expanduser()]
    return []


def load_texts(source: str, data_dir: Path) -> list[str]:
    """The documents of a named source, in a fixed order."""
    if source.startswith("ref-"):
        return [doc.text for doc in load_split(source.removeprefix("ref-"))]
    if source == "wikitext2-test" or source in WIKITEXT_SPLITS:
        raw = _read(data_dir / WIKITEXT_TEST, "paths.data=<dir> or LWQ_DATA")
        articles = wikitext_articles(raw)
        if source == "wikitext2-test":
            return articles
        calib, heldout = split_articles(articles, seed=WIKITEXT_SPLIT_SEED)
        return calib if source == "wikitext2-test-calib" else heldout
    if source == "wikitext2-train":
        return _hub_wikitext("train")
    if source.startswith("file:"):
        return [_read(Path(source.removeprefix("file:")), "calib.text=file:<path>")]
    raise LwqError(f"unknown text source {source!r}; use {', '.join(NAMED_SOURCES)} or file:<path>")


def _read(path: Path, how_to_point: str) -> str:
    if not path.is_file():
        raise LwqError(f"text file {path} not found; point to it with {how_to_point}")
    return path.read_text(encoding="utf-8")


def wikitext_articles(raw: str) -> list[str]:
    """Split raw WikiText into articles at top-level ` = Title = ` lines."""
    articles: list[list[str]] = []
    for line in raw.splitlines(keepends=True):
        if _ARTICLE_TITLE.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(lines) for lines in articles]


def split_articles(articles: list[str], *, seed: int) -> tuple[list[str], list[str]]:
    """(calibration quarter, held-out rest) of `articles`, chosen with `seed`; each part
    keeps the file's order. A quarter of WikiText-2 test is ~60k tokens: 32 x 256
    calibration windows with room to spare."""
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    calib = set(order[: max(1, len(articles) // 4)])
    return (
        [a for i, a in enumerate(articles) if i in calib],
        [a for i, a in enumerate(articles) if i not in calib],
    )


def _hub_wikitext(split: str) -> list[str]:
    """WikiText-2 raw from the hub; rows joined per article as in the local file."""
    try:
        from datasets import load_dataset

        rows = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
        raise LwqError(
            f"could not load Salesforce/wikitext ({type(err).__name__}); without internet "
            "use a local file: calib.text=file:<path>"
        ) from err
    return wikitext_articles("".join(rows))


def chunk_documents(texts: list[str], max_chars: int) -> list[str]:
    """Cut documents at line boundaries into pieces of at most ~max_chars characters."""
    chunks = []
    for text in texts:
        current = ""
        for line in text.splitlines(keepends=True):
            if current and len(current) + len(line) > max_chars:
                chunks.append(current)
                current = ""
            current += line
        if current.strip():
            chunks.append(current)
    return chunks


def seeded_subset(items: list, limit: int | None, seed: int) -> list:
    """The same `limit` items for every point of a sweep (a seeded sample, kept in order)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise LwqError(f"limit must be at least 1 (got {limit}); use null for all items")
    picked = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in picked]


def calibration_ids(texts: list[str], tokenizer, *, samples: int, seq_len: int, seed: int):
    """`samples` windows of `seq_len` tokens, drawn with a seed from the texts joined by EOS.

    Returns a (samples, seq_len) long tensor on the CPU; no padding, so every token counts.
    """
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
    if len(ids) <= seq_len:
        raise LwqError(
            f"calibration text has {len(ids)} tokens, fewer than calib.seq_len={seq_len}; "
            "use a longer text or a smaller calib.seq_len"
        )
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (samples,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
