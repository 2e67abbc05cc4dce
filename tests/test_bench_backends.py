"""The backends benchmark covers every backend and width, with sizes that grow with bits."""

import pytest

from bench.backends import bench_backends
from lwq.quant import BACKENDS
from lwq.quant.base import FULL_PRECISION
from tests.conftest import compose_config, small_run_overrides

pytestmark = pytest.mark.slow  # every backend at every width on the reference model


def test_every_backend_and_width_is_measured(tmp_path):
    run = compose_config(*small_run_overrides(tmp_path))
    result = bench_backends(run, heldout_pieces=3, speed_samples=2, short=True)  # same checks
    for name in BACKENDS.names():
        widths = sorted(BACKENDS.get(name).supported_bits - {FULL_PRECISION})
        refused = [b for b in widths if "refused" in result[name][str(b)]]
        # only llama.cpp's K-quants refuse ref-tiny's 128-wide rows (blocks of 256)
        assert refused == ([2, 3, 4, 5, 6] if name == "gguf" else []), name
        widths = [b for b in widths if b not in refused]
        sizes = [result[name][str(b)]["weight_bytes"] for b in widths]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), name
        assert all(result[name][str(b)]["tokens_per_second"] > 0 for b in widths)
        low = result[name][str(widths[0])]["heldout_token_ppl"]
        assert low > result["unquantized"]["heldout_token_ppl"], name  # the lowest width hurts
