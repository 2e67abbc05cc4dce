"""`python run.py export`: one plan as a file an inference engine runs, checked there.

The plan is the one a sweep would evaluate: `export.k` blocks at `sweep.low` by the
metric's order (the rest at `sweep.high`), or `plan_file=`, or the allocator's plan for
`budget=`. `export.format=gguf` (default): llama.cpp's tools write the file from the
model's checkpoint (lwq.export.gguf_file), a manifest beside it says what each block
really got, and llama-perplexity measures the file against lwq on the weights it holds
(lwq.export.check). `export.format=gptq`: the plan's GPTQ blocks as lwq built them are
saved as a checkpoint (lwq.export.gptq_checkpoint) and loaded back by gptqmodel for the
same comparison; slider's blocks too (quant=slider: its codes, scales and zero points
packed in the GPTQ format, asymmetric). Both checks' numbers go into the manifest.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from lwq.commands.context import RunContext, open_context
from lwq.commands.points import allocation_settings, plan_points
from lwq.commands.preflight import check_inputs, hub_options, model_config
from lwq.config import RunConfig
from lwq.data import load_texts
from lwq.errors import LwqError
from lwq.export import check as file_check
from lwq.export import gptq_checkpoint
from lwq.export.gguf_file import all_types, block_types, summary, tensor_names, write
from lwq.llama_cpp import LlamaCpp, locate
from lwq.modeling.blocks import block_linears, find_blocks
from lwq.modeling.load import load_model, meta_model, read_checkpoint_facts
from lwq.plan import Plan
from lwq.quant.base import FULL_PRECISION
from lwq.runtime import pick_device, resolve_model_path, seed_everything


def check_export(run: RunConfig) -> tuple[LlamaCpp | None, Path | None]:
    """What can be refused before anything loads: the tools, the checkpoint directory, a
    plan's widths without a llama.cpp type, `export.k` beyond the model's blocks, a GPTQ
    checkpoint asked of another backend. Returns (tools, checkpoint) for a GGUF export."""
    spec = run.export
    gguf = spec.format == "gguf"
    if not gguf and run.quant.name not in GPTQ_PACKABLE:
        raise LwqError(
            f"export.format=gptq saves the GPTQ or slider blocks lwq calibrates, not "
            f"quant={run.quant.name}'s; add quant=gptq or quant=slider (with the sweep's "
            "quant.settings, to reuse its cached blocks)"
        )
    tools = locate() if gguf else None
    if gguf and run.model.gguf_file:
        raise LwqError(
            "export starts from a safetensors checkpoint, not model.gguf_file; convert the "
            "GGUF once (as `make smollm2` does) and point model.path at the result"
        )
    checkpoint = Path(resolve_model_path(run.model.path))
    if gguf and not checkpoint.is_dir():
        raise LwqError(
            f"export converts a local checkpoint directory; model.path={run.model.path} is not "
            "one here (download the model, then give its directory as model.path=<dir>)"
        )
    if run.manual_plan is not None:
        if gguf:
            block_types(run.manual_plan, spec.gguf.types)
    elif not run.budget.wanted:
        if spec.k is None:
            raise LwqError(
                "export needs a plan: export.k=<blocks at sweep.low>, plan_file=<path> or "
                "budget=<average bits>"
            )
        blocks = read_checkpoint_facts(str(checkpoint), **hub_options(run)).blocks
        if blocks is not None and spec.k > blocks:
            raise LwqError(f"export.k={spec.k} but {run.model.name} has {blocks} blocks")
        if gguf:
            block_types(Plan((run.sweep.high, run.sweep.low)), spec.gguf.types)
    return tools, checkpoint if gguf else None


GPTQ_PACKABLE = ("gptq", "slider")  # backends whose blocks a GPTQ checkpoint can hold


def run_export(run: RunConfig) -> dict:
    seed_everything(run.seed)
    tools, checkpoint = check_export(run)
    check_inputs(run, evaluate=False)
    if run.export.format == "gptq":
        return _export_gptq(run)
    return _export_gguf(run, tools, checkpoint)


def _export_gguf(run: RunConfig, tools: LlamaCpp, checkpoint: Path) -> dict:
    spec = run.export
    plan, source = _plan(run)
    names = _gguf_tensor_names(run) if plan.mixed else None
    types = "-".join(sorted(all_types(block_types(plan, spec.gguf.types, names))))
    name = f"{run.model.name}-{source['label']}-{types}.gguf"  # e.g. ...-k12-4to2-q2_k-q4_k
    out = spec.out or run.paths.results / "exports" / name
    print(f"exporting {source['label']} {plan.as_list()} to {out}")
    manifest = write(checkpoint, plan, out, spec.gguf, tools, names)
    manifest |= {"model": run.model.name, "plan_source": source}
    print(summary(manifest))
    planned = source.get("planned")
    if planned and planned["format"] == "gguf":
        in_file = [b["bits_per_weight"] for b in manifest["blocks"]]
        manifest["file_bits_equal_plan"] = in_file == planned["block_bits_per_weight"]
        print(
            f"planned in GGUF bits (allocate.format=gguf): {planned['bits_per_weight']:.4f} "
            f"bits/weight, every block's bits "
            + ("equal in the file" if manifest["file_bits_equal_plan"] else "DIFFER in the file")
        )
    if spec.check:
        manifest["check"] = _check(run, tools, Path(out))
        check = manifest["check"]
        print(
            f"check on {check['tokens']} tokens of {check['text']}: llama.cpp perplexity "
            f"{check['llama_cpp']:.4f}, lwq on the file's weights {check['lwq']:.4f} "
            f"({100 * check['relative_difference']:+.2f} %)"
        )
    Path(f"{out}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _gguf_tensor_names(run: RunConfig) -> list[list[str]]:
    """The GGUF names of every block's linears, from the model's config (no weights)."""
    config, _ = model_config(run)
    model = meta_model(config)
    blocks = find_blocks(model)
    linear_names = [[name for name, _ in block_linears(block)] for block in blocks]
    prefix = gptq_checkpoint.block_prefix(model, blocks)
    return tensor_names(config.model_type, prefix, linear_names)


def _export_gptq(run: RunConfig) -> dict:
    """The plan's GPTQ blocks, as the sweep built them (cached variants are reused), saved
    as a GPTQ checkpoint and loaded back through gptqmodel for the check."""
    ctx = open_context(run, evaluate=False)
    plan, source = _plan(run, ctx)
    out = run.export.out or run.paths.results / "exports" / (
        f"{run.model.name}-{source['label']}-gptq"
    )
    print(f"exporting {source['label']} {plan.as_list()} to {out}/")
    # the packed linears themselves rather than their evaluated form: the same blocks, so
    # the cached variants still serve
    ctx.applier(packed=True).apply(plan)
    if run.quant.name == "slider":  # merged linears on their grid: packed here
        for block, bits in zip(ctx.blocks, plan.bits, strict=True):
            if bits != FULL_PRECISION:
                ctx.backend.pack(block, bits)
    settings = ctx.backend.checkpoint_settings()
    config = gptq_checkpoint.write(
        ctx.model, ctx.tokenizer, ctx.blocks, plan, settings, Path(out), ctx.sizes.linear_names
    )
    manifest = {
        "model": run.model.name,
        "directory": str(out),
        "plan": plan.as_list(),
        "plan_source": source,
        "quantization_config": config,
        **gptq_checkpoint.read_back(Path(out), ctx.blocks),
    }
    print(gptq_checkpoint.summary(manifest))
    if run.export.check:
        manifest["check"] = _check_gptq(run, ctx, Path(out))
        check = manifest["check"]
        print(
            f"check on {check['tokens']} tokens of {check['text']}: gptqmodel on the checkpoint "
            f"{check['gptqmodel']:.4f}, lwq on the plan with float16 storage "
            f"{check['lwq_float16_storage']:.4f} ({100 * check['relative_difference']:+.3f} %); "
            f"as lwq evaluates it {check['lwq']:.4f}; packed tensors "
            + ("identical" if check["same_packed_tensors"] else "DIFFERENT: the export is wrong")
        )
    Path(out, "lwq_export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _plan(run: RunConfig, ctx: RunContext | None = None) -> tuple[Plan, dict]:
    """The plan to export and where it came from (the manifest's `plan_source`); opens a
    context for the scores unless given one (and then frees its model)."""
    if run.manual_plan is not None:
        label = f"plan-{Path(run.plan_file).stem}"
        return run.manual_plan, {"label": label, "file": str(run.plan_file)}
    own = ctx is None
    ctx = ctx or open_context(run, evaluate=False)  # scores are cached
    try:
        k = None if run.budget.wanted else run.export.k
        if k is not None and k > len(ctx.blocks):
            raise LwqError(f"export.k={k} but {run.model.name} has {len(ctx.blocks)} blocks")
        ks = [] if k is None else [k]
        points = plan_points(
            run, ctx.identity, ctx.sizes, ctx.score_source(), ks=ks, searched=ctx.search_source()
        )
        point = next(p for p in points if p.kind in ("allocated", "quantized"))
        if point.kind == "allocated":
            budget = run.budget.avg_bits or run.budget.bytes
            key = ctx.identity.score_key("sensitivity", allocation_settings(run))
            label = f"budget{budget}" + ("-searched" if run.budget.method == "search" else "")
            source = {"label": label, "budget": budget, "scores": key}
            if "achieved" in point.fields:  # allocate.format: what the plan holds in the file
                source["planned"] = point.fields["achieved"]
            return point.plan, source
        metric = run.metric
        name = metric.name + ("-reverse" if metric.reverse else "")
        label = f"{name}-k{k}-{run.sweep.high}to{run.sweep.low}"
        source = {"metric": name, "order": point.fields["ranking"], "k": k}
        key = ctx.identity.score_key(metric.name, metric.settings)
        return point.plan, {"label": label, **source, "scores": key}
    finally:
        if own:
            del ctx
            gc.collect()


def _check_gptq(run: RunConfig, ctx: RunContext, out: Path) -> dict:
    """Perplexity of the checkpoint as gptqmodel loads it, and of the plan as installed in
    lwq, on the same token chunks (llama-perplexity's protocol): as lwq evaluated it, and
    with what stays unquantized rounded to float16 as the checkpoint stores it (`ctx.model`
    is changed: the export is over)."""
    from gptqmodel import BACKEND, GPTQModel

    text, n_ctx, chunks, window = _check_window(run)
    ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]

    def perplexity(model) -> float:
        return file_check.torch_perplexity(model, ids, n_ctx=n_ctx, chunks=chunks, bos=None)

    dtype = next(ctx.model.parameters()).dtype
    as_evaluated = perplexity(ctx.model)
    as_saved = perplexity(ctx.model.to(torch.float16).to(dtype))
    # float16 as stored (left to itself gptqmodel picks bfloat16 on this CPU, rounding the
    # float16 scales); its torch kernel runs in float16 or bfloat16 only, so the loaded
    # model is cast to lwq's dtype to compare
    loaded = GPTQModel.load(
        str(out), device=str(ctx.device), backend=BACKEND.TORCH, dtype=torch.float16
    )
    same = gptq_checkpoint.same_packed_tensors(ctx.model, ctx.blocks, loaded.model)
    from_file = perplexity(loaded.model.to(dtype))
    return window | {
        "same_packed_tensors": same,
        "gptqmodel": from_file,
        "lwq": as_evaluated,
        "lwq_float16_storage": as_saved,
        "relative_difference": as_saved / from_file - 1,
    }


def _check(run: RunConfig, tools: LlamaCpp, out: Path) -> dict:
    text, n_ctx, chunks, window = _check_window(run)
    threads = run.export.gguf.threads
    ppl_cpp = file_check.llama_cpp_perplexity(
        tools, out, text, n_ctx=n_ctx, chunks=chunks, threads=threads
    )
    device = pick_device(run.device)
    model, tokenizer = load_model(
        str(out.parent), dtype=torch.float32, device=device, gguf_file=out.name
    )
    ids, bos = file_check.file_tokens(out, tokenizer, text)
    ppl_lwq = file_check.torch_perplexity(model, ids, n_ctx=n_ctx, chunks=chunks, bos=bos)
    return window | {
        "llama_cpp": ppl_cpp,
        "lwq": ppl_lwq,
        "relative_difference": ppl_lwq / ppl_cpp - 1,
    }


def _check_window(run: RunConfig) -> tuple[str, int, int, dict]:
    """The check's text, chunk length and chunk count, and how the manifest names them."""
    n_ctx = run.export.check_ctx or run.model.max_length
    chunks = run.export.check_chunks
    text = "\n\n".join(load_texts(run.model.eval_text, run.paths.data))
    scored = chunks * (n_ctx - 1 - n_ctx // 2)  # llama-perplexity scores each chunk's 2nd half
    window = {"text": run.model.eval_text, "n_ctx": n_ctx, "chunks": chunks, "tokens": scored}
    return text, n_ctx, chunks, window
