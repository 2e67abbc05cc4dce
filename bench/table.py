"""The short table `make bench` prints after writing bench/results.json: one line per
figure a reader checks against its target, each with the section that measured it."""

from __future__ import annotations


def summary_lines(result: dict) -> list[str]:
    """Lines of `name | value | target` for whatever sections `result` holds."""
    rows: list[tuple[str, str, str]] = []
    sweep = result.get("default_sweep")
    if sweep:
        rows.append(("default sweep (python run.py)", f"{sweep['total_seconds']} s", ""))
    for model, p in result.get("pipeline", {}).items():
        rows.append(
            (
                f"pipeline {model}: in process vs hand-written",
                f"{p['in_process_seconds']} s vs {p['naive_seconds']} s = {p['speedup']}x",
                ">= 5x",
            )
        )
        parts = ""
        if "evaluations_over_bare_forwards" in p:
            parts = (
                f" (evaluations {p['evaluations_over_bare_forwards']:+.0%}, "
                f"{p['once_a_sweep_seconds']} s once a sweep)"
            )
        rows.append(
            (
                f"pipeline {model}: sweep over bare forwards",
                f"{p['overhead_over_bare_forwards']:+.0%}{parts}",
                "<= +20%",
            )
        )
    for model, r in result.get("roofline", {}).items():
        rows.append(
            (
                f"roofline {model}: of the matmul limit",
                f"{r['fraction_of_limit']:.0%} ({r['reached_gflops_per_s']} of "
                f"{r['matmul_limit']['gflops_per_s']} GFLOP/s)",
                ">= 50%",
            )
        )
    for model, s in result.get("stages", {}).items():
        deepest = max(s["by_blocks"], key=int)
        for backend, stage in s["slowest_at_deepest"].items():
            seconds = s["by_blocks"][deepest][backend]
            rows.append(
                (
                    f"stages {model} x{deepest} blocks, {backend}: slowest",
                    f"{stage} {seconds[stage]} s of {seconds['total']} s",
                    "",
                )
            )
    for model, m in result.get("memory", {}).items():
        rows.append(
            (
                f"memory {model}: sweep peak RSS",
                f"{m['sweep_peak_rss_mb']} MB (load only {m['load_only_peak_rss_mb']} MB; "
                f"weights + originals {m['weights_mb'] + m['kept_originals_mb']:.1f} MB)",
                "",
            )
        )
    for model, r in result.get("reuse", {}).items():
        saved = ", ".join(f"{name} {p['saved']:.0%}" for name, p in r["planned"].items())
        m = r["measured_11_point"]
        rows.append((f"reuse {model}: block-forwards saved", saved, ">= 40% every-k, 15% 11-point"))
        rows.append(
            (
                f"reuse {model}: 11-point sweep on vs off",
                f"{m['reuse on']['seconds']} s vs {m['reuse off']['seconds']} s, "
                f"identical numbers: {m['identical_numbers']}",
                "",
            )
        )
    if not rows:
        return []
    width = max(len(name) for name, _, _ in rows)
    return [f"{name:<{width}}  {value}" + (f"  [{t}]" if t else "") for name, value, t in rows]
