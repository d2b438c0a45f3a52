"""Expert offloading on CPU: dynroute.offload vs accelerate's disk offload, and the
trace simulator's hit rates per policy and cache size.

    pip install -e ".[bench]"   # accelerate, the baseline
    PYTHONPATH=src python benchmarks/offload.py [--runs DIR] [--new-tokens 32] [--threads 1]

Models: a trained tiny DynMoE run (top-p; trained once with ``dynroute train`` into
--runs), and transformers Mixtral, Qwen2-MoE and OLMoE architectures with random weights
(4 layers of 16 experts, hidden 256, expert width 512: experts are ~90% of the weights),
patched with ``dynroute.hf.apply_routing(model, "top_k")`` (their own top-k routing).

For each model and 25 / 50 / 100% of the experts resident: greedy generation of
--new-tokens tokens from a 16-token prompt at batch 1 with

- ``offload_experts(model, budget, policy)``, policies ``pregate`` and ``lru``, experts in
  a cold safetensors store on disk (``cold=True``: every read is followed by
  ``posix_fadvise(DONTNEED)`` on its range, and the store's files are dropped from the
  page cache before the run, so each miss reads the disk);
- accelerate: ``infer_auto_device_map(max_memory={"cpu": non-expert + share x experts})``
  and ``dispatch_model(..., offload_dir=...)``, its offload folder dropped from the page
  cache before the run (it memory-maps its files, so re-reads within a run may be warm);

tokens/s, weights held in memory (non-expert weights + expert slots; accelerate: the
weights its map keeps on "cpu"), bytes moved per token, hit rate, and whether the tokens
equal the resident model's. Then the simulator: routing traces of the DynMoE run on its
evaluation windows with its top-p router and with top-2 on the same weights, and of
generation on every model, replayed through every policy at 1/8 .. all of the experts.
Writes benchmarks/results/offload.json and offload.png. No GPU: CPU numbers only.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynroute.common.jsonfile import write_json
from dynroute.offload import (
    drop_page_cache,
    offload_experts,
    prefetch_quality,
    record_trace,
    sweep,
)

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "offload.json"
PLOT = HERE / "results" / "offload.png"
SHARES = (0.25, 0.5, 1.0)
SIM_SHARES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
RUN_CONFIG = """[model]
d_model = 96
n_layers = 4
n_heads = 4
d_ff = 256
num_experts = 16
router = {name = "top_p", p = 0.4}
expert_layout = "per_expert"

[data]
source = "stdlib"
vocab_size = 1024

[train]
steps = 60
batch_size = 4
seq_len = 96
warmup_steps = 6
log_interval = 10
eval_interval = 60
eval_batches = 2
checkpoint_interval = 60
threads = 2
"""
HF = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 16}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {"num_experts": 16, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512},
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {"num_experts": 16, "eos_token_id": 1, "pad_token_id": 0},
    ),
}
HF_COMMON = dict(
    vocab_size=2048,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    num_experts_per_tok=2,
)


def trained_run(runs: Path) -> Path:
    """The tiny top-p DynMoE run (trained once, kept under ``runs``)."""
    out = runs / "offload-dynmoe"
    if not (out / "model").exists():
        runs.mkdir(parents=True, exist_ok=True)
        config = runs / "offload-dynmoe.toml"
        config.write_text(RUN_CONFIG)
        cmd = [
            sys.executable,
            "-m",
            "dynroute.cli",
            "train",
            "--config",
            str(config),
            "--out",
            str(out),
            "--no-progress",
        ]
        subprocess.run(cmd, check=True)
    return out


def dynmoe_factory(run: Path) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(model factory, prompt [1, 16], evaluation windows [n, T])."""
    from dynroute.checkpoints import load_model

    loaded = load_model(run)
    windows = torch.as_tensor(loaded.eval_set()[:, :-1], dtype=torch.long)
    state = loaded.model

    def build() -> nn.Module:
        return copy.deepcopy(state).eval()

    return build, windows[:1, :16], windows


def hf_factory(name: str) -> tuple[Any, torch.Tensor]:
    import transformers

    from dynroute.hf import apply_routing

    config_cls, model_cls, extra = HF[name]
    config = getattr(transformers, config_cls)(**{**HF_COMMON, **extra})

    def build(patched: bool = True) -> nn.Module:
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config).eval()
        return apply_routing(model, "top_k") if patched else model

    prompt = torch.randint(
        2, HF_COMMON["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1)
    )
    return build, prompt


def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
        return out, time.perf_counter() - start


def weight_bytes(model: nn.Module, experts: bool) -> int:
    """Bytes of the expert (or the other) weights of a resident model."""
    return sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if ("experts" in n and "shared" not in n) == experts
    )


def run_ours(
    build: Any,
    prompt: torch.Tensor,
    new_tokens: int,
    share: float,
    policy: str,
    want: torch.Tensor,
    folder: Path,
) -> dict[str, Any]:
    model = build()
    other = weight_bytes(model, experts=False)
    off = offload_experts(model, f"{share * 100:g}%", policy=policy, store=folder, cold=True)
    drop_page_cache(folder)
    out, seconds = generate(model, prompt, new_tokens)
    off.close()
    s = off.summary()
    row = {
        "method": f"dynroute.offload ({policy})",
        "share": share,
        "tokens_per_s": new_tokens / seconds,
        "memory_bytes": other + s["slot_bytes"],
        "bytes_per_token": s["bytes_per_token"],
        "hit_rate": s["hit_rate"],
        "prefetch_used": s["prefetch_used"],
        "load_seconds": s["load_seconds"],
        "identical": bool(torch.equal(out, want)),
    }
    print(
        f"  {row['method']:28s} {share:>5.0%}: {row['tokens_per_s']:7.1f} tok/s, "
        f"hit {s['hit_rate']:.1%}, {s['bytes_per_token'] / 1e6:.2f} MB/token",
        flush=True,
    )
    return row


def expand_lists(model: nn.Module, device_map: dict[str, Any]) -> dict[str, Any]:
    """A ModuleList in the map becomes its layers: accelerate then hooks each layer's
    forward (a list has none; hooks on its leaves would miss weights a layer reads without
    calling their module's forward, as dynroute's dispatch does)."""
    out: dict[str, Any] = {}
    for name, device in device_map.items():
        module = model.get_submodule(name) if name else model
        if isinstance(module, nn.ModuleList):
            out.update({f"{name}.{i}": device for i in range(len(module))})
        else:
            out[name] = device
    return out


def run_accelerate(
    build: Any,
    prompt: torch.Tensor,
    new_tokens: int,
    share: float,
    want: torch.Tensor,
    folder: Path,
) -> dict[str, Any]:
    """accelerate's offload as ``from_pretrained(device_map="auto", max_memory=...)`` places
    it: whole decoder layers (``_no_split_modules``) on "cpu" until the budget, the rest on
    "disk" (loaded from ``offload_dir`` by a hook before each forward of the module)."""
    from accelerate import dispatch_model, infer_auto_device_map

    model = build()
    other, experts = weight_bytes(model, False), weight_bytes(model, True)
    budget = int(other + share * experts)
    no_split = getattr(model, "_no_split_modules", None)
    device_map = expand_lists(
        model,
        infer_auto_device_map(model, max_memory={"cpu": budget}, no_split_module_classes=no_split),
    )
    on_cpu = sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if device_map.get("") == "cpu"
        or any(n.startswith(k + ".") for k, v in device_map.items() if v == "cpu")
    )
    model = dispatch_model(model, device_map, main_device="cpu", offload_dir=str(folder))
    moved = sum(f.stat().st_size for f in folder.glob("*.dat"))
    for path in folder.glob("*.dat"):  # accelerate's offload files: cold like ours
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    out, seconds = generate(model, prompt, new_tokens)
    row = {
        "method": "accelerate (disk offload)",
        "share": share,
        "tokens_per_s": new_tokens / seconds,
        "memory_bytes": on_cpu,
        # every forward reads every module mapped to disk (prefill + one per new token)
        "bytes_per_token": moved * new_tokens / (new_tokens + prompt.shape[1] - 1),
        "hit_rate": None,
        "identical": bool(torch.equal(out, want)),
        "device_map": {k: v for k, v in device_map.items()},
    }
    print(f"  {row['method']:28s} {share:>5.0%}: {row['tokens_per_s']:7.1f} tok/s", flush=True)
    return row


def try_accelerate(
    build: Any,
    prompt: torch.Tensor,
    new_tokens: int,
    share: float,
    want: torch.Tensor,
    folder: Path,
) -> dict[str, Any]:
    """:func:`run_accelerate`, or a row saying how it failed."""
    try:
        return run_accelerate(build, prompt, new_tokens, share, want, folder)
    except Exception as err:
        print(f"  accelerate {share:.0%}: failed: {type(err).__name__}: {err}", flush=True)
        return {
            "method": "accelerate (disk offload)",
            "share": share,
            "error": f"{type(err).__name__}: {str(err)[:200]}",
        }


def bench_model(
    name: str, build: Any, prompt: torch.Tensor, new_tokens: int, tmp: Path
) -> dict[str, Any]:
    """Resident, ours (pregate, lru) and accelerate at every share, plus a generation trace."""
    print(f"{name}:", flush=True)
    model = build()
    want, seconds = generate(model, prompt, new_tokens)
    with record_trace(model, label=name) as recorder:
        generate(model, prompt, new_tokens)
    trace = recorder.trace()
    experts, other = weight_bytes(model, True), weight_bytes(model, False)
    rows = [
        {
            "method": "resident",
            "share": 1.0,
            "tokens_per_s": new_tokens / seconds,
            "memory_bytes": experts + other,
            "bytes_per_token": 0.0,
            "hit_rate": 1.0,
            "identical": True,
        }
    ]
    print(f"  resident: {rows[0]['tokens_per_s']:.1f} tok/s", flush=True)
    del model
    for share in SHARES:
        for policy in ("pregate", "lru"):
            folder = tmp / f"{name}-{policy}-{share}"
            rows.append(run_ours(build, prompt, new_tokens, share, policy, want, folder))
        folder = tmp / f"{name}-acc-{share}"
        rows.append(try_accelerate(unpatched(build), prompt, new_tokens, share, want, folder))
    return {
        "model": name,
        "rows": rows,
        "expert_share_of_weights": experts / (experts + other),
        "trace": trace_summary(trace),
    }


def unpatched(build: Any) -> Any:
    """The transformers model without dynroute's adapter (accelerate runs the original);
    our own DynMoE model as it is."""
    try:
        build(patched=False)
    except TypeError:
        return build
    return lambda: build(patched=False)


def trace_summary(trace: Any) -> dict[str, Any]:
    """Simulator rows of one trace, its pre-gating quality and its size."""
    rows = sweep(trace, shares=SIM_SHARES)
    return {
        "label": trace.label,
        "tokens": trace.num_tokens,
        "layers": trace.num_layers,
        "experts_per_layer": trace.num_experts[0],
        "expert_bytes": trace.expert_bytes,
        "prefetch": prefetch_quality(trace),
        "sweep": rows,
    }


def routing_traces(build: Any, windows: torch.Tensor) -> list[dict[str, Any]]:
    """Traces of the DynMoE run on its evaluation windows: its top-p, then top-2 (same weights)."""
    from dynroute.routing import layer_router

    out = []
    for label in ("top_p", "top_k"):
        model = build()
        if label == "top_k":
            for moe in model.moe_layers():
                moe.route = layer_router("top_k", moe.num_experts, k=2)
                moe.router_state = None
        with torch.no_grad(), record_trace(model, label=f"dynmoe {label}") as recorder:
            for row in windows[:8]:
                model(row[None])
        out.append(trace_summary(recorder.trace()))
    return out


def plot(result: dict[str, Any]) -> None:
    """Hit rate vs cache size per policy (DynMoE top-p, top-2, and one transformers model),
    and tokens/s per method at 50%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynroute.common.html import write_figure

    traces = [*result["routing_traces"], result["models"][-1]["trace"]]
    fig, axes = plt.subplots(1, len(traces) + 1, figsize=(5 * (len(traces) + 1), 4))
    for ax, trace in zip(axes, traces, strict=False):
        for policy in sorted({r["policy"] for r in trace["sweep"]}):
            rows = [r for r in trace["sweep"] if r["policy"] == policy]
            ax.plot(
                [r["share"] for r in rows],
                [r["hit_rate"] for r in rows],
                marker="o",
                label=policy,
                linestyle="--" if policy == "belady" else "-",
            )
        ax.set(
            title=f"{trace['label']} ({trace['tokens']} tokens)",
            xlabel="experts resident (share)",
            ylabel="hit rate",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=8)
    ax = axes[-1]
    methods = ["dynroute.offload (pregate)", "dynroute.offload (lru)", "accelerate (disk offload)"]
    names = [m["model"].split(" ")[0] for m in result["models"]]
    for i, method in enumerate(methods):
        speeds = [
            next(
                r.get("tokens_per_s", 0.0)
                for r in m["rows"]
                if r["method"] == method and r["share"] == 0.5
            )
            for m in result["models"]
        ]
        ax.bar([j + 0.27 * (i - 1) for j in range(len(names))], speeds, width=0.27, label=method)
    ax.set_xticks(range(len(names)), names)
    ax.set(title="greedy decoding at 50% of experts (CPU, cold disk store)", ylabel="tokens/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, PLOT)


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/offload.md and BENCHMARKS.md §16 from a results dict."""
    mb = 1e6
    lines = [
        "| model | method | resident | tokens/s | weights in memory (MB) | MB moved / token "
        "| hit rate | same tokens |",
        "|---|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for m in result["models"]:
        for r in m["rows"]:
            if "error" in r:
                lines.append(
                    f"| {m['model']} | {r['method']} | {r['share']:.0%} | failed: "
                    f"{r['error'][:60]} | | | | |"
                )
                continue
            hit = "—" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
            lines.append(
                f"| {m['model']} | {r['method']} | {r['share']:.0%} | {r['tokens_per_s']:.1f} "
                f"| {r['memory_bytes'] / mb:.1f} | {r['bytes_per_token'] / mb:.2f} | {hit} "
                f"| {'yes' if r['identical'] else 'no'} |"
            )
    lines += ["", "| trace | tokens | policy | " + " | ".join(
        f"{s:.1%}" for s in SIM_SHARES) + " | pre-gating precision / recall |",
        "|---|---:|---|" + "---:|" * len(SIM_SHARES) + "---|"]  # fmt: skip
    traces = [*result["routing_traces"], *(m["trace"] for m in result["models"])]
    for t in traces:
        pre = t["prefetch"]
        for policy in sorted({r["policy"] for r in t["sweep"]}):
            rates = [r["hit_rate"] for r in t["sweep"] if r["policy"] == policy]
            extra = f"{pre['precision']:.2f} / {pre['recall']:.2f}" if policy == "pregate" else ""
            lines.append(
                f"| {t['label']} | {t['tokens']} | {policy} | "
                + " | ".join(f"{x:.3f}" for x in rates)
                + f" | {extra} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print the saved results' tables and redraw the plot; run nothing.",
    )
    args = parser.parse_args()
    if args.markdown:  # the saved results again: their tables, and the plot redrawn
        import json

        saved = json.loads(RESULTS.read_text())
        plot(saved)
        print(markdown(saved))
        return
    torch.set_num_threads(args.threads)
    build, prompt, windows = dynmoe_factory(trained_run(args.runs))
    result: dict[str, Any] = {
        "device": "cpu (no GPU lent: GPU numbers not measured)",
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "prompt_tokens": 16,
        "routing_traces": routing_traces(build, windows),
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="dynroute-offload-bench-") as tmp:
        result["models"].append(
            bench_model("dynmoe (trained, top-p)", build, prompt, args.new_tokens, Path(tmp))
        )
        for name in HF:
            hf_build, hf_prompt = hf_factory(name)
            result["models"].append(
                bench_model(name, hf_build, hf_prompt, args.new_tokens, Path(tmp))
            )
    write_json(RESULTS, result)
    plot(result)
    print(markdown(result))
    print(f"wrote {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
