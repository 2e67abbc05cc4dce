"""The end-of-sweep table: every row names its ordering, the best row per average bits
carries a star, failed points are left out."""

from lwq.results.table import format_table


def _record(kind, k, avg_bits, ppl, **extra):
    return {
        "kind": kind,
        "k": k,
        "fraction": None if k is None else k / 12,
        "avg_bits": avg_bits,
        "bits_per_weight": avg_bits + 0.15,
        "weight_bytes": 2_000_000,
        "eval": {
            "tasks": {"lwq_ppl_x": {"byte_perplexity": ppl, "token_perplexity": 10 * ppl}},
            "average": {"acc": 0.4},
            "kl": {"mean": ppl - 2.9, "top1_agreement": 0.9},
            "cross_check": None,
        },
    } | extra


def _rows(table: str) -> dict[str, list[str]]:
    """{row label: the row's other cells}; labels are the cells before the fraction."""
    rows = {}
    for line in table.splitlines()[1:]:
        cells = line.split()
        cut = next(i for i, c in enumerate(cells) if c == "-" or c[0].isdigit() and "." in c)
        rows[" ".join(cells[:cut])] = cells[cut:]
    return rows


def test_rows_name_their_ordering_and_the_best_per_average_bits_is_starred():
    random = {"metric": "random", "metric_settings": {"seed": 0}}
    table = format_table(
        [
            _record("quantized", 5, 3.1667, 3.02, metric="ldi", metric_settings={}),
            _record("quantized", 5, 3.1667, 3.10, **random),
            _record("quantized", 5, 3.1667, 3.06, **(random | {"metric_settings": {"seed": 1}})),
            _record("quantized", 5, 3.1667, 3.50, metric="ldi", metric_settings={}, reverse=True),
            _record("reference", None, 16.0, 2.99),
            _record("pruned", 5, 4.0, 3.3, metric="ldi", metric_settings={}),
            _record("allocated", None, 3.25, 3.01),
            _record("quantized", 6, 3.0, 9.9, metric="zd", status="failed"),
        ]
    )
    header = table.splitlines()[0].split()
    assert "average:acc" in header and "ppl_x:byte_perplexity" in header and "kl:mean" in header
    assert table.splitlines()[1].split()[0] == "unquantized"  # the reference comes first
    rows = _rows(table)
    assert set(rows) == {
        "unquantized",
        "ldi k=5",
        "random seed=0 k=5",
        "random seed=1 k=5",
        "ldi reversed k=5",
        "ldi pruned k=5",
        "allocated",
    }  # the failed zd point is not a row
    starred = [name for name, cells in rows.items() if cells[-1] == "*"]
    assert starred == ["ldi k=5"]  # lowest token perplexity of the four at 3.167 bits
