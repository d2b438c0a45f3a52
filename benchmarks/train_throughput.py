"""Training-step throughput and model FLOP utilisation: dynroute vs transformers' Mixtral.

Every model is trained by the same loop (AdamW, autocast, clipping, one optimizer step
per batch; dynroute's ``dynroute.train`` settings) on the same random token batches:

- dynroute top-1, top-2, top-p (p calibrated on the model so that k̄ ≈ 1.5; the k̄ of
  the timed steps is measured and reported), and a dense model of top-2's active size
  (SwiGLU FFN of width 2·d_ff in every layer);
- transformers' ``MixtralForCausalLM`` of the same shape (top-2, router aux loss on,
  tied embeddings, SDPA attention) with its fastest experts implementation installed
  (``grouped_mm`` when transformers has it, else ``batched_mm``, else eager).

Configs are interleaved (each repeat times every config once) and the median step time
of the repeats is reported. MFU = model FLOPs per step / step time / peak FLOP/s, with
model FLOPs = 6 · (active matmul parameters) · tokens + 12 · layers · d_model · seq_len
· tokens (PaLM's attention term; active parameters = attention 4·d², k̄ experts of
3·d·f, router d·E per layer, and the LM head d·V; the embedding lookup is free), and the
peak measured in the same run as the best rate of a large square matmul in the run's
dtype on the run's device.

    PYTHONPATH=src python benchmarks/train_throughput.py                 # CPU, demo size
    PYTHONPATH=src python benchmarks/train_throughput.py --device cuda --dtype bfloat16 \
        --compile --d-model 1024 --d-ff 2816 --layers 8 --experts 16 --batch 16 --seq 1024 \
        --out benchmarks/results/train_throughput_cuda.json

Writes benchmarks/results/train_throughput.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynroute.common.jsonfile import write_json
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.train.blocks import compile_blocks
from dynroute.train.device import DTYPES, autocast, fused_adamw_supported, resolve_device

RESULTS = Path(__file__).parent / "results"


@dataclass
class Entry:
    """One model under test: how to build it, run a step on it, and its k̄."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[torch.Tensor, torch.Tensor], Any]
    experts: float  # k̄ per MoE layer (dense: 0, counted as its own FFN)
    ffn_width: int  # width of the FFN active per token (k̄ · d_ff, or the dense width)
    times: list[float] = field(default_factory=list)
    measured_k: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """Best FLOP/s of an n×n @ n×n matmul over ~``seconds`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=3e-4, weight_decay=0.1, fused=fused_adamw_supported(device) or None
    )


def _dynroute(args: argparse.Namespace, device: torch.device, **model: Any) -> DynMoEForCausalLM:
    cfg = DynMoEConfig(
        vocab_size=args.vocab, max_seq_len=args.seq, d_model=args.d_model, n_layers=args.layers,
        n_heads=args.heads, num_experts=args.experts, **{"d_ff": args.d_ff, **model},
    )  # fmt: skip
    torch.manual_seed(0)
    net = DynMoEForCausalLM(cfg).to(device)
    if args.compile:
        compile_blocks(net)
    return net


def calibrate_top_p(args: argparse.Namespace, device: torch.device, target: float) -> float:
    """The top-p threshold whose k̄ on a batch is closest to ``target`` (bisection)."""
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    lo, hi = 1e-3, 0.999
    for _ in range(20):
        p = (lo + hi) / 2
        net = _dynroute(args, device, router="top_p", p=p)
        with torch.no_grad(), autocast(device, args.dtype):
            k = float(net(x).experts_per_layer.mean())
        lo, hi = (p, hi) if k < target else (lo, p)
        if abs(k - target) < 0.02:
            break
    return p


def _mixtral(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, str]:
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    impl = next((i for i in ("grouped_mm", "batched_mm") if i in ALL_EXPERTS_FUNCTIONS), "eager")
    config = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_ff,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, num_local_experts=args.experts, num_experts_per_tok=2,
        max_position_embeddings=args.seq, output_router_logits=True,
        router_aux_loss_coef=1e-2, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    config._experts_implementation = impl
    torch.manual_seed(0)
    net = MixtralForCausalLM(config).to(device)
    if args.compile:
        for layer in net.model.layers:
            layer.compile()
    return net, impl


def build(args: argparse.Namespace, device: torch.device) -> tuple[list[Entry], dict[str, Any]]:
    f = args.d_ff
    entries: list[Entry] = []
    p = calibrate_top_p(args, device, args.target_k)

    def ours(name: str, width: int, experts: float, **model: Any) -> None:
        net = _dynroute(args, device, **model)
        entries.append(
            Entry(
                name, net, _optimizer(net, device),
                lambda x, y, net=net: net(x, labels=y), experts, width,
            )
        )  # fmt: skip

    ours("dynroute top-1", f, 1, router="top_k", k=1)
    ours("dynroute top-2", 2 * f, 2, router="top_k", k=2)
    ours(f"dynroute top-p (p={p:.3f})", f, args.target_k, router="top_p", p=p)
    ours("dense (top-2 active size)", 2 * f, 0, d_ff=2 * f, moe_every=args.layers + 1)
    hf, impl = _mixtral(args, device)
    entries.append(
        Entry(
            f"transformers Mixtral ({impl})", hf, _optimizer(hf, device),
            lambda x, y, net=hf: net(input_ids=x, labels=x), 2, 2 * f,
        )
    )  # fmt: skip
    return entries, {"top_p": p, "mixtral_experts_implementation": impl}


def step(entry: Entry, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: str) -> None:
    with autocast(device, dtype):
        out = entry.forward(x, y)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(entry.model.parameters(), 1.0)
    entry.optimizer.step()
    entry.optimizer.zero_grad(set_to_none=True)
    if getattr(out, "experts_per_layer", None) is not None and entry.experts:
        entry.measured_k.append(float(out.experts_per_layer.mean()))


def model_flops(args: argparse.Namespace, ffn_width: float, experts: float, tokens: int) -> float:
    """6 · active matmul parameters · tokens + PaLM's attention term."""
    d = args.d_model
    router = d * args.experts if experts else 0
    per_layer = 4 * d * d + 3 * d * ffn_width + router
    active = args.layers * per_layer + d * args.vocab
    return 6 * active * tokens + 12 * args.layers * d * args.seq * tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    ap.add_argument("--compile", action="store_true", help="torch.compile every block")
    # The demo's size (configs/demo.toml).
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=256)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--target-k", type=float, default=1.5, help="k̄ top-p is calibrated to")
    ap.add_argument("--steps", type=int, default=3, help="training steps per timing")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--peak-n", type=int, default=0, help="matmul size for the peak (0: auto)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    entries, chosen = build(args, device)
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(device)
        for _ in range(args.steps)
    ]
    for entry in entries:
        for _ in range(args.warmup):
            step(entry, batches[0][:, :-1], batches[0][:, 1:], device, args.dtype)
        entry.measured_k.clear()
    for repeat in range(args.repeats):
        for entry in entries:  # interleaved: each repeat times every model once
            _sync(device)
            start = time.perf_counter()
            for b in batches:
                step(entry, b[:, :-1], b[:, 1:], device, args.dtype)
            _sync(device)
            entry.times.append((time.perf_counter() - start) / args.steps)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    n = args.peak_n or (2048 if device.type == "cpu" else 8192)
    peak = matmul_peak(device, DTYPES[args.dtype], n)
    tokens = args.batch * args.seq
    rows = []
    for entry in entries:
        seconds = statistics.median(entry.times)
        k = statistics.mean(entry.measured_k) if entry.measured_k else entry.experts
        width = k * args.d_ff if entry.experts else entry.ffn_width
        flops = model_flops(args, width, entry.experts, tokens)
        rows.append(
            {
                "model": entry.name,
                "k_bar": round(k, 3) if entry.experts else None,
                "step_s": seconds,
                "step_s_all": entry.times,
                "tokens_per_s": tokens / seconds,
                "model_flops_per_step": flops,
                "mfu": flops / seconds / peak,
            }
        )
    top1 = next(r for r in rows if r["model"] == "dynroute top-1")
    hf = rows[-1]
    for r in rows:
        r["step_vs_top1"] = r["step_s"] / top1["step_s"]
        r["tokens_per_s_vs_transformers"] = r["tokens_per_s"] / hf["tokens_per_s"]
    meta = {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "peak_flops": peak,
        "peak_matmul_n": n,
        "tokens_per_step": tokens,
        **{k: v for k, v in vars(args).items() if k != "out"},
        **chosen,
    }  # fmt: skip
    meta["dtype"] = args.dtype
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"meta": meta, "rows": rows})
    print(
        f"\n{device} {args.dtype}{' compiled' if args.compile else ''}: d_model {args.d_model}, "
        f"{args.layers} layers, {args.experts} experts, d_ff {args.d_ff}, {tokens} tokens/step; "
        f"peak {peak / 1e9:.1f} GFLOP/s (measured matmul)\n"
    )
    print("| model | k̄ | step (ms) | tokens/s | MFU | step / top-1 | tokens/s / transformers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        k = f"{r['k_bar']:.2f}" if r["k_bar"] is not None else "dense"
        print(
            f"| {r['model']} | {k} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['mfu']:.1%} | {r['step_vs_top1']:.2f} | {r['tokens_per_s_vs_transformers']:.2f} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
