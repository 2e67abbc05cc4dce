"""Every place lwq reaches inside lm-evaluation-harness, in one module, for the version it
was written for.

lwq uses lm-eval's public API (`lm_eval.evaluator.evaluate`, `TaskManager`, `HFLM`) and
overrides three internals to stop paying per point for work that does not depend on the
model: a task's `build_all_requests` (rendering, done once: `RequestsOnce`), HFLM's
`_encode_pair` (tokenizing each pair once) and the progress bars of HFLM's request
methods; it also sets HFLM's batch size per call of `_loglikelihood_tokens` so that the
whole (batch x length x vocabulary) log-softmax lm-eval computes stays under
`eval.logits_memory` (`rows_within`), answers the requests itself when not even one row
fits (lwq.evaluation.bounded_requests), and wraps its rolling log-likelihoods (held-out
text) in the caller's context (`lwq_rolling`: prefix reuse, lwq.modeling.prefix); and
it sets the offline flags `datasets` and `huggingface_hub` read at import.
Those internals change between releases, so `check_version` refuses any lm-eval but
the one these overrides were checked against (pyproject pins it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from importlib import metadata

from lwq.errors import LwqError
from lwq.evaluation.bounded_requests import answer_requests, row_bytes

WRITTEN_FOR = "0.4.13"


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def check_version() -> None:
    """Refuse an lm-eval whose internals these overrides were not checked against."""
    installed = lm_eval_version()
    if installed != WRITTEN_FOR:
        raise LwqError(
            f"lm-eval {installed} is installed; lwq's overrides of its internals "
            f"(lwq/evaluation/lm_eval_internals.py) were written for {WRITTEN_FOR}: "
            f"pip install lm-eval=={WRITTEN_FOR}"
        )


class RequestsOnce:
    """Replaces one task object's `build_all_requests`: render at the first call only.

    Rendering (Jinja templates per document) depends only on the documents and the call's
    arguments, never on the model, so later calls with the same arguments get fresh
    copies of the first call's instances (`resps` and `filtered_resps` empty, as built).
    """

    def __init__(self, task) -> None:
        self._task = task
        self._build = task.build_all_requests  # the bound method of the class
        self._arguments: str | None = None
        self._built: list = []

    def __call__(self, **arguments) -> None:
        key = repr(sorted(arguments.items()))
        if key != self._arguments:
            self._build(**arguments)
            self._built = [fresh(instance) for instance in self._task._instances]
            self._arguments = key
        self._task._instances = [fresh(instance) for instance in self._built]


def fresh(instance):
    return dataclasses.replace(instance, resps=[], filtered_resps={})


def encode_once_hflm():
    """HFLM that tokenizes each (context, continuation) pair once in its lifetime.

    `_encode_pair` is a pure function of the two strings for a fixed tokenizer and its
    lists are only read afterwards (HFLM._loglikelihood_tokens copies them).
    """
    from lm_eval.models.huggingface import HFLM

    class EncodeOnceHFLM(HFLM):
        lwq_quiet = False  # True: no progress bar per request type (the sweep has its own)
        lwq_logits_memory: float | None = None  # GB for lm-eval's logits; None = no bound
        lwq_rolling = None  # a context factory around rolling log-likelihoods (prefix reuse)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm or self.lwq_quiet)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            around = self.lwq_rolling() if self.lwq_rolling else contextlib.nullcontext()
            with around:
                return super().loglikelihood_rolling(requests, disable_tqdm or self.lwq_quiet)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm or self.lwq_quiet)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **options):
            # loglikelihood_rolling asks for a bar per batch of windows whatever it is told
            quiet = disable_tqdm or self.lwq_quiet
            configured = self.batch_size_per_gpu
            if self.lwq_logits_memory is not None and requests:
                longest = min(max(len(c) + len(t) for _, c, t in requests), self.max_length + 1)
                vocab = self.model.get_output_embeddings().out_features
                one_row = row_bytes(longest - 1, vocab)
                if self.backend == "causal" and one_row > self.lwq_logits_memory * 1e9:
                    return answer_requests(self, requests, self.lwq_logits_memory)
                self.batch_size_per_gpu = rows_within(
                    self.lwq_logits_memory, longest - 1, vocab, configured
                )
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm=quiet, **options)
            finally:
                self.batch_size_per_gpu = configured

        def _encode_pair(self, context: str, continuation: str):
            pairs = self.__dict__.setdefault("_lwq_pairs", {})
            if (context, continuation) not in pairs:
                pairs[context, continuation] = super()._encode_pair(context, continuation)
            return pairs[context, continuation]

    return EncodeOnceHFLM


def rows_within(memory_gb: float, length: int, vocab: int, batch_size: int) -> int:
    """Rows of a batch whose logits and log-softmax (float32, as lm-eval holds them at
    once) fit `memory_gb`: at most `batch_size`, at least one."""
    return max(1, min(batch_size, int(memory_gb * 1e9) // row_bytes(length, vocab)))


def go_offline() -> None:
    """Keep lm-eval's `datasets` from the network (it pings the Hub on every load_dataset).

    Both libraries read these variables once, at import, and transformers usually has
    imported huggingface_hub already, so set their flags as well as the variables.
    Tasks on hub data are loaded (downloaded) once, in the harness's preparation, before this.
    """
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def quiet_lm_eval(verbose: bool) -> None:
    """lm-eval's info lines and known warnings (an in-memory model "is not of type str")
    and `datasets`' "Generating test split" bars say nothing a sweep's own progress does
    not; `verbose` keeps lm-eval's warnings."""
    import datasets

    logging.getLogger("lm_eval").setLevel(logging.WARNING if verbose else logging.ERROR)
    datasets.disable_progress_bars()
