"""Routing among a library of independently trained adapters, side by side with peft's Arrow.

    python benchmarks/adapter_library.py [--base-steps 300] [--steps 150] [--gate-steps 100]
                                         [--sizes 8,32,128] [--quick]

1. Pre-trains the tiny DynMoE base (configs/tiny.toml) unless the runs folder holds it.
2. ``build_library``: one rank-4 LoRA on ``qkv``/``proj`` per held-in built-in domain
   (python, docstrings, docs), each followed by its PHATGOOSE gate run, and the jointly
   trained MoLE (3 experts, top-2) on the same domains; ``licenses`` is held out.
3. ``evaluate_library``: validation loss per domain for the base, every library router
   (Arrow, PHATGOOSE, dynamic-k over both, uniform merge, oracle) and the MoLE; peft's
   Arrow (``create_arrow_model`` on the same adapters, exported as peft folders) beside it,
   with the largest logit difference to ours.
4. Speed: libraries of 8 / 32 / 128 random adapters (same rank and modules) on the same
   base: forward tokens/s of ours (Arrow top-2, dynamic-k, uniform over all) and of peft's
   Arrow top-2, and the logit difference at each size.
Writes benchmarks/results/adapter_library.json and adapter_library.png; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dynroute.checkpoints import load_model
from dynroute.common.jsonfile import write_json
from dynroute.lora.config import LoRAConfig, LoRADataConfig, LoRARunConfig
from dynroute.lora.library import (
    export_peft_adapters,
    library_layers,
    load_adapter_library,
    set_library_router,
    write_peft_adapter,
)
from dynroute.lora.library.build import LIBRARY_JSON, build_library, read_tokens
from dynroute.lora.library.report import evaluate_library, evaluate_routed, result_rows
from dynroute.train import TrainConfig
from lora import train_base  # benchmarks/lora.py: the same tiny base

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
RANK, TOP_K = 4, 2


def _config(steps: int) -> LoRARunConfig:
    train_cfg = TrainConfig(
        steps=steps, batch_size=8, seq_len=64, lr=3e-3, min_lr=3e-4, warmup_steps=10,
        weight_decay=0.0, log_interval=25, checkpoint_interval=10**9, eval_batches=None,
        seed=0, threads=1,
    )  # fmt: skip
    lora = LoRAConfig(["qkv", "proj"], num_experts=3, rank=RANK, alpha=2.0 * RANK,
                      router=f"top_k:k={TOP_K}")  # fmt: skip
    return LoRARunConfig(lora, LoRADataConfig(max_train_bytes=200_000, max_val_bytes=20_000),
                         train_cfg)  # fmt: skip


def _peft_arrow(base: Path, folders: list[Path]) -> torch.nn.Module:
    import peft

    arrow = peft.ArrowConfig(top_k=TOP_K, router_temperature=1.0, rng_seed=0)
    return peft.create_arrow_model(load_model(base).model, [str(f) for f in folders], arrow).eval()


@torch.no_grad()
def _max_diff(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor) -> float:
    return float((a(ids).logits - b(ids).logits).abs().max())


def _peft_rows(lib: Path, base: Path, cfg: LoRARunConfig, result: dict) -> dict[str, Any]:
    """peft's Arrow on the trained adapters: its losses and the largest logit difference."""
    info = json.loads((lib / LIBRARY_JSON).read_text())
    names = list(info["adapters"])
    ours = load_adapter_library(load_model(base).model, [lib / info["adapters"][d] for d in names],
                                router="arrow", top_k=TOP_K, names=names)  # fmt: skip
    folders = export_peft_adapters(ours, lib / "peft")
    ours = load_adapter_library(load_model(base).model, folders, router="arrow", top_k=TOP_K)
    theirs = _peft_arrow(base, folders)
    tokens = read_tokens(cfg, base)
    diffs = {}
    for d, arr in tokens.val.items():
        ids = torch.as_tensor(arr[: 8 * 64].astype("int64")).reshape(8, 64)
        diffs[d] = _max_diff(ours, theirs, ids)
    t = cfg.train
    losses = evaluate_routed(theirs, tokens.val, t.batch_size, t.seq_len, None)
    for v in losses.values():
        v["adapters_per_token"] = len(names)  # peft runs every adapter for every token
    mean = lambda ds: statistics.fmean(losses[d]["loss"] for d in ds)  # noqa: E731
    row = {"router": f"peft Arrow (top_k={TOP_K})", "kind": "peft", "domains": losses,
           "held_in_loss": mean(result["held_in"]), "held_out_loss": mean(result["held_out"]),
           "adapters_per_token": float(len(names))}  # fmt: skip
    return {"row": row, "max_logit_diff": diffs}


def _random_library(folder: Path, n: int, modules: dict[str, tuple[int, int]]) -> list[Path]:
    """n random rank-4 adapters (trained-looking: non-zero B) on ``modules``, as peft folders."""
    out = []
    for i in range(n):
        path = folder / f"adapter{i:03d}"
        if not (path / "adapter_model.safetensors").is_file():
            g = torch.Generator().manual_seed(1000 + i)
            weights = {
                m: (torch.rand(RANK, d_in, generator=g) * 2 / math.sqrt(d_in) - 1 / math.sqrt(d_in),
                    torch.randn(d_out, RANK, generator=g) * 0.05, 1.0)
                for m, (d_in, d_out) in modules.items()
            }  # fmt: skip
            write_peft_adapter(path, weights, RANK)
        out.append(path)
    return out


@torch.no_grad()
def _tokens_per_second(model: torch.nn.Module, ids: torch.Tensor, reps: int) -> float:
    model(ids)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model(ids)
        times.append(time.perf_counter() - start)
    return ids.numel() / statistics.median(times)


def _speed(base: Path, runs: Path, sizes: list[int], reps: int) -> list[dict[str, Any]]:
    plain = load_model(base).model.eval()
    modules = {
        n: (m.in_features, m.out_features)
        for n, m in plain.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("qkv", "proj")
    }
    ids = torch.randint(
        0, plain.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0)
    )
    base_tps = _tokens_per_second(plain, ids, reps)
    rows = []
    for n in sizes:
        folders = _random_library(runs / "random_adapters", n, modules)
        ours = load_adapter_library(load_model(base).model, folders, router="arrow", top_k=TOP_K)
        theirs = _peft_arrow(base, folders)
        row: dict[str, Any] = {
            "library_size": n,
            "base_tokens_per_s": base_tps,
            "max_logit_diff": _max_diff(ours, theirs, ids),
            "peft_arrow_tokens_per_s": _tokens_per_second(theirs, ids, reps),
        }
        for label, spec in (("arrow_top2", "arrow"), ("dynamic_k_p0.5", "dynamic_k:top_p=0.5"),
                            ("uniform_all", "uniform")):  # fmt: skip
            set_library_router(
                ours, spec, top_k=TOP_K, **({"max_k": TOP_K} if "dyn" in spec else {})
            )
            row[f"{label}_tokens_per_s"] = _tokens_per_second(ours, ids, reps)
            layers = library_layers(ours).values()
            row[f"{label}_adapters_per_token"] = statistics.fmean(
                m.last_routing.mean_experts() for m in layers)  # fmt: skip
        rows.append(row)
        print(f"size {n}: ours arrow {row['arrow_top2_tokens_per_s']:,.0f} tok/s, peft "
              f"{row['peft_arrow_tokens_per_s']:,.0f} tok/s, diff {row['max_logit_diff']:.1e}",
              flush=True)  # fmt: skip
        del ours, theirs
    return rows


def _targets(rows: list[dict], speed: list[dict], diffs: dict[str, float]) -> dict[str, Any]:
    by = {r["router"]: r for r in rows}
    base, uniform = by["base model"]["held_out_loss"], by["uniform"]["held_out_loss"]
    beats = [r["router"] for r in rows if r["kind"] == "library" and r["held_out_loss"]
             is not None and r["held_out_loss"] < min(base, uniform)]  # fmt: skip
    dyn = []
    specs = {(r["spec"]["name"], r["spec"].get("top_k")): r for r in rows if r.get("spec")}
    for r in rows:
        if not r["router"].startswith("dynamic_k"):
            continue
        ref = specs[(r["spec"]["scores"], TOP_K)]
        dyn.append({"router": r["router"], "vs": ref["router"],
                    "held_in_loss_delta": r["held_in_loss"] - ref["held_in_loss"],
                    "held_out_loss_delta": r["held_out_loss"] - ref["held_out_loss"],
                    "adapters_per_token": r["adapters_per_token"],
                    "top_k_adapters_per_token": ref["adapters_per_token"]})  # fmt: skip
    all_diffs = [*diffs.values(), *(s["max_logit_diff"] for s in speed)]
    return {"arrow_equals_peft_1e-5": max(all_diffs) <= 1e-5, "max_logit_diff": max(all_diffs),
            "held_out_beat_uniform_and_base": beats, "dynamic_k_vs_top_k": dyn}  # fmt: skip


def _plot(rows: list[dict], speed: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (
        (axes[0], "held_in_loss", "held-in domains"),
        (axes[1], "held_out_loss", "held-out domain (no adapter saw it)"),
    )
    for ax, key, title in panels:
        for r in rows:
            if r[key] is None:
                continue
            marker = {"base": "s", "mole": "D", "peft": "x"}.get(r["kind"], "o")
            ax.scatter(r["adapters_per_token"], r[key], marker=marker)
            ax.annotate(r["router"], (r["adapters_per_token"], r[key]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("adapters computed per token")
        ax.set_ylabel("mean validation loss")
        ax.set_title(title)
    sizes = [s["library_size"] for s in speed]
    lines = (
        ("arrow_top2", "ours: Arrow top-2"),
        ("dynamic_k_p0.5", "ours: dynamic-k (p=0.5, ≤2)"),
        ("uniform_all", "ours: uniform (all adapters)"),
        ("peft_arrow", "peft: Arrow top-2"),
    )
    for key, label in lines:
        axes[2].plot(sizes, [s[f"{key}_tokens_per_s"] for s in speed], marker="o", label=label)
    axes[2].axhline(speed[0]["base_tokens_per_s"], color="grey", ls=":", label="base alone")
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("adapters in the library")
    axes[2].set_ylabel("forward tokens/s (8 × 64, 1 thread, CPU)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--gate-steps", type=int, default=100)
    parser.add_argument("--sizes", default="8,32,128")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps")
    args = parser.parse_args()
    if args.quick:
        args.base_steps, args.steps, args.gate_steps, args.sizes = 20, 6, 4, "4,8"
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared box
    started = time.perf_counter()
    runs = RESULTS / ("adapter_library_runs_quick" if args.quick else "adapter_library_runs")
    base = train_base(runs / f"base_{args.base_steps}", args.base_steps)
    cfg = _config(args.steps)
    lib = runs / f"library_{args.steps}_{args.gate_steps}"
    if not (lib / LIBRARY_JSON).is_file():
        build_library(cfg, base, lib, ["licenses"], args.gate_steps, mole=True, progress=False)
    print(f"library built: {time.perf_counter() - started:.0f}s", flush=True)
    result = evaluate_library(lib, top_k=TOP_K)
    peft_part = _peft_rows(lib, base, cfg, result)
    rows = [*result["rows"], peft_part["row"]]
    print(f"evaluated: {time.perf_counter() - started:.0f}s", flush=True)
    speed = _speed(
        base, runs, [int(s) for s in args.sizes.split(",")], reps=5 if args.quick else 20
    )
    out = {
        "machine": platform.platform(), "torch": torch.__version__, "threads": 1,
        "base_steps": args.base_steps, "steps": args.steps, "gate_steps": args.gate_steps,
        "rank": RANK, "top_k": TOP_K, "held_in": result["held_in"],
        "held_out": result["held_out"], "rows": rows,
        "max_logit_diff_vs_peft": peft_part["max_logit_diff"], "speed": speed,
        "targets": _targets(rows, speed, peft_part["max_logit_diff"]),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    name = "adapter_library_quick" if args.quick else "adapter_library"
    write_json(RESULTS / f"{name}.json", out)
    _plot(rows, speed, RESULTS / f"{name}.png")
    header, cells = result_rows({**result, "rows": rows})
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for c in cells:
        print("| " + " | ".join(c) + " |")
    print(json.dumps(out["targets"], indent=1))


if __name__ == "__main__":
    main()
