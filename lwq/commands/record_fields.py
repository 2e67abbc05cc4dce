"""What every record of a run says it came from: the weights' and data files' sha256, the
weights' source (a GGUF's types), and the run's tracker. Read once per run."""

from __future__ import annotations

import time
from pathlib import Path

from lwq.config import RunConfig
from lwq.data import load_texts, source_files
from lwq.evaluation.suite import Suite
from lwq.modeling import gguf
from lwq.provenance import files_sha256, texts_sha256, weight_files
from lwq.results.tracking import make_tracker
from lwq.runtime import resolve_model_path


def weight_digests(run: RunConfig) -> dict:
    """sha256 of each weight file of the checkpoint (local, or the hub's cached snapshot);
    of a GGUF model, of its one file."""
    files = weight_files(resolve_model_path(run.model.path))
    if run.model.gguf_file:
        files = [f for f in files if f.name == run.model.gguf_file]
    base = files[0].parent if files else None
    return files_sha256(files, run.paths.cache / "sha256.json", base=base)


def weights_source(run: RunConfig) -> dict | None:
    """Where the weights came from when they were not full precision: a GGUF file loaded
    directly, or the GGUF a local checkpoint was converted from (its types, e.g. Q4_1)."""
    path = Path(resolve_model_path(run.model.path))
    if run.model.gguf_file and (path / run.model.gguf_file).is_file():
        return gguf.describe(path / run.model.gguf_file, with_sha256=False)
    return gguf.read_source(path) if path.is_dir() else None


def data_digests(run: RunConfig, suite: Suite) -> dict:
    """sha256 of every data file the run reads (evaluation and calibration), named relative
    to the data directory; the stdlib corpus, which is no data file, by its documents."""
    data = run.paths.data
    files = [*suite.data_files(), *source_files(run.calib.text, data)]
    digests = files_sha256(files, run.paths.cache / "sha256.json", base=data)
    for source in {run.calib.text, run.eval.spec.text} - {None}:
        if source.startswith("ref-"):
            digests[source] = texts_sha256(load_texts(source, data))
    return digests


def tracker(run: RunConfig):
    tracking = run.tracking
    if tracking.name == "none":
        return make_tracker("none")
    name = f"{run.model.name}-{run.metric.name}-{run.baseline}-{time.strftime('%H%M%S')}"
    return make_tracker(
        tracking.name,
        project=tracking.project,
        name=name,
        config=run.plain,
        mode=tracking.mode,
        dir=run.paths.results,
    )
