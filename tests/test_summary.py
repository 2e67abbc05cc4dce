from lwq.results.table import format_table


def _record(kind, k, avg_bits, ppl):
    return {
        "kind": kind,
        "k": k,
        "fraction": None if k is None else k / 12,
        "avg_bits": avg_bits,
        "bits_per_weight": avg_bits + 0.15,
        "weight_bytes": 2_000_000,
        "eval": {
            "tasks": {"lwq_ppl_x": {"byte_perplexity": ppl}},
            "average": {"acc": 0.4},
            "cross_check": None,
        },
    }


def test_table_labels_every_kind_and_shows_averages():
    table = format_table(
        [
            _record("quantized", 5, 3.1667, 3.02),
            _record("reference", None, 16.0, 2.99),
            _record("pruned", 5, 4.0, 3.3),
            _record("allocated", None, 3.25, 3.01),
        ]
    )
    lines = table.splitlines()
    assert "average:acc" in lines[0] and "ppl_x:byte_perplexity" in lines[0]
    assert lines[1].split()[0] == "unquantized"  # the reference comes first
    labels = [" ".join(line.split()[:2]) for line in lines[2:]]
    assert "k=5 0.417" in labels and "pruned k=5" in labels
    assert any(line.split()[:2] == ["allocated", "-"] for line in lines)
