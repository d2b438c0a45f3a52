"""Post-hoc dynamic routing of trained top-k models: loss vs expert FLOPs, measured.

Trains (or reuses) small top-k models on the built-in corpus (the Python standard
library, configs/demo.toml's data), then for each one runs ``dynroute.posthoc.sweep``:
the static baseline (top-k with a smaller k), every training-free method calibrated to
fractions of k, and the cheap fixes on 2% of the model's training tokens. Models:

- ``dynmoe_top2`` / ``dynmoe_top3``: ``dynroute train --config configs/demo.toml
  --router top_k:k=K --steps 200`` (409,600 training tokens each);
- ``mixtral`` / ``qwen2_moe``: transformers Mixtral / Qwen2-MoE architectures (hidden
  128, 4 layers, 8 experts, top-2), trained here through ``dynroute.hf`` (their own top-2
  routing, dynroute's router losses) on the same tokens;
- ``olmoe_top8``: an OLMoE-like top-8-of-64 model (hidden 128, 4 layers, experts of
  width 64), trained the same way for 150 steps (307,200 tokens).

Writes benchmarks/results/posthoc.json (a list of rows, one per model x setting) and
benchmarks/results/posthoc.png after every model (a partial run keeps what it measured).

    .venv/bin/python benchmarks/posthoc.py                       # every model (~1 h, 1 core)
    .venv/bin/python benchmarks/posthoc.py --models dynmoe_top2  # one
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.common.jsonfile import write_json
from dynroute.data import eval_windows, prepare_data
from dynroute.hf import apply_routing
from dynroute.posthoc import METHODS, STATIC, SweepData, SweepSettings, fine_tune, sweep
from dynroute.posthoc.run import posthoc_model, split_windows, window_inputs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SEQ_LEN, BATCH, EVAL_SET = 128, 16, 256  # configs/demo.toml's shapes and evaluation set
TARGETS = (0.9, 0.75, 0.6, 0.5)
DYNMOE = {"dynmoe_top2": 2, "dynmoe_top3": 3}
#: Training steps, evaluation windows and calibration tokens of every model, and the
#: smaller OLMoE-like run (its 64 experts cost more per step on one core).
SHAPES = {"steps": 200, "eval_windows": 64, "calib_tokens": 3072}
SHAPE_OF = {"olmoe_top8": {"steps": 150, "eval_windows": 48, "calib_tokens": 2048}}


def hf_model(name: str, vocab: int) -> torch.nn.Module:
    """A small transformers MoE model of one family (random init, seed 0)."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    if name == "mixtral":
        cfg = tf.MixtralConfig(
            **common, intermediate_size=256, num_local_experts=8, num_experts_per_tok=2
        )
        return tf.MixtralForCausalLM(cfg)
    if name == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(
            **common,
            intermediate_size=256,
            moe_intermediate_size=192,
            shared_expert_intermediate_size=128,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
        )
        return tf.Qwen2MoeForCausalLM(cfg)
    cfg = tf.OlmoeConfig(
        **common, intermediate_size=64, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False
    )
    return tf.OlmoeForCausalLM(cfg)  # fmt: skip


def train_dynmoe(k: int, folder: Path, steps: int) -> None:
    """``dynroute train`` a demo-size top-k model into ``folder`` (kept when it is there)."""
    if (folder / "model" / "config.json").is_file():
        return
    cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config",
           str(REPO / "configs" / "demo.toml"), "--router", f"top_k:k={k}", "--steps",
           str(steps), "--out", str(folder), "--no-progress"]  # fmt: skip
    subprocess.run(cmd, check=True)


def train_hf(name: str, data: Any, folder: Path, steps: int) -> torch.nn.Module:
    """Train (or load) a transformers model on the demo corpus, routed by dynroute.hf."""
    from transformers import AutoModelForCausalLM

    if (folder / "config.json").is_file():
        return apply_routing(AutoModelForCausalLM.from_pretrained(folder), "top_k").eval()
    model = apply_routing(hf_model(name, data.vocab_size), "top_k")  # own routing, exactly
    tuned = fine_tune(model, np.asarray(data.train_tokens), list(model.parameters()),
                      steps=steps, batch_size=BATCH, seq_len=SEQ_LEN, lr=3e-3)  # fmt: skip
    print(f"{name}: trained {tuned.tokens} tokens, loss {tuned.losses[0]:.2f} -> "
          f"{np.mean(tuned.losses[-10:]):.2f}", flush=True)  # fmt: skip
    model.save_pretrained(folder)
    data.hf_tokenizer().save_pretrained(folder)
    return model


def settings_for(train_tokens: int, fixes: list[str], fix_targets: list[float]) -> SweepSettings:
    """Every method at TARGETS; fixes on 2% of the model's training tokens."""
    per_step = 4 * SEQ_LEN
    fix_tokens = max(per_step, int(0.02 * train_tokens) // per_step * per_step)
    return SweepSettings(targets=TARGETS, methods=(STATIC, *METHODS), fixes=fixes,
                         fix_targets=fix_targets, fix_tokens=fix_tokens, fix_batch=4,
                         fix_seq_len=SEQ_LEN)  # fmt: skip


def run_model(name: str, args: argparse.Namespace, data: Any) -> list[dict[str, Any]]:
    """Train or reuse model ``name``, sweep it; rows with the model's training tokens."""
    folder = args.runs / name
    shape = {**SHAPES, **SHAPE_OF.get(name, {})}
    for key in shape:  # a flag given on the command line wins
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    steps, n_eval, n_calib = shape["steps"], shape["eval_windows"], shape["calib_tokens"]
    train_tokens = steps * BATCH * SEQ_LEN
    tell = lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)  # noqa: E731
    if name in DYNMOE:
        train_dynmoe(DYNMOE[name], folder, steps)
        fix_targets = [0.75, 0.5] if DYNMOE[name] == 2 else [0.75]
        settings = settings_for(train_tokens, ["router_ft", "null_ft", "distill"], fix_targets)
        rows = posthoc_model(folder, settings, eval_windows=n_eval, calib_tokens=n_calib,
                             progress=tell)  # fmt: skip
    else:
        model = train_hf(name, data, folder, steps)
        windows = eval_windows(np.asarray(data.val_tokens), SEQ_LEN, EVAL_SET)
        ev, cal = split_windows(windows, n_eval, n_calib)
        settings = settings_for(train_tokens, ["router_ft", "distill"], [0.75])
        sweep_data = SweepData(ev, window_inputs(cal, 8), np.asarray(data.train_tokens))
        rows = sweep(model, sweep_data, settings, label=name, progress=tell)
    return [{**row, "model": name, "train_tokens": train_tokens} for row in rows]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss vs expert FLOPs per token (fraction of k), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = min(3, len(models))
    rows_ = -(-len(models) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.6 * cols, 3.9 * rows_), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models, strict=False):
        mine = [r for r in rows if r["model"] == model]
        base = next(r for r in mine if r["method"] == "original")
        fix_style = {"router_ft": ("s", "tab:brown"), "null_ft": ("D", "black"),
                     "distill": ("P", "tab:pink")}  # fmt: skip
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((r["expert_fraction"], r["val_loss"]) for r in mine
                         if r["method"] == method)  # fmt: skip
            if method in METHODS:  # every line starts at the trained model
                pts.append((1.0, base["val_loss"]))
            xs, ys = zip(*pts, strict=True)
            if method == "original":
                ax.plot(xs, ys, "k*", ms=12, label=f"top-{base['k']} (trained)")
            elif method == STATIC:
                ax.plot(xs, ys, "kX", ms=10, label="static smaller k")
            elif method in METHODS:
                ax.plot(xs, ys, "-o", ms=3, label=method)
            else:
                marker, color = fix_style.get(method, ("s", "gray"))
                ax.plot(xs, ys, marker, color=color, ms=7, label=f"{method} (fix)")
        ax.set_title(f"{model}: top-{base['k']} of {base['num_experts']}")
        ax.set_xlabel("expert FLOPs per token (fraction of k)")
        ax.set_ylabel("validation loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per model: loss change (%) of each method at each target (measured k̄ / k in the
    header), the static smaller-k points, and the fixes with their token budget."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = mine[0]
        targets = sorted({r["target"] for r in mine if r["method"] in METHODS}, reverse=True)
        out.append(f"**{model}** (top-{base['k']} of {base['num_experts']}, "
                   f"{base['train_tokens']:,} training tokens, val loss "
                   f"{base['base_val_loss']:.4f}): loss change vs the trained model, % "
                   "(top-1 kept)\n")  # fmt: skip
        out.append("| method | " + " | ".join(f"{t:g} k" for t in targets) + " |")
        out.append("|---|" + "---:|" * len(targets))
        for method in [m for m in METHODS if any(r["method"] == m for r in mine)]:
            cells = []
            for t in targets:
                r = next(r for r in mine if r["method"] == method and r["target"] == t)
                cells.append(f"{r['loss_delta_pct']:+.2f} ({r['top1_kept']:.0%})")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        static = [r for r in mine if r["method"] == STATIC]
        out.append("\nstatic top-k: " + ", ".join(
            f"k={round(r['mean_experts'])} {r['loss_delta_pct']:+.2f}%" for r in static
        ))  # fmt: skip
        fixes = [r for r in mine if r.get("fix")]
        if fixes:
            out.append(f"\nfixes ({fixes[0]['fix_tokens']:,} tokens each, "
                       f"{fixes[0]['fix_tokens'] / base['train_tokens']:.0%} of training): "
                       + ", ".join(f"{r['fix']} at {r['target']:g} k "
                                   f"(k̄ {r['mean_experts']:.2f}) {r['loss_delta_pct']:+.2f}%"
                                   for r in fixes))  # fmt: skip
        out.append("\n")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="dynmoe_top2,mixtral,olmoe_top8,dynmoe_top3,qwen2_moe")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "posthoc")
    parser.add_argument("--steps", type=int, default=None, help="Default: SHAPES / SHAPE_OF.")
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--calib-tokens", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "posthoc.json")
    parser.add_argument(
        "--append", action="store_true", help="Keep the rows of other models already in --out."
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print the tables of --out's results (measure nothing).",
    )
    args = parser.parse_args()
    if args.markdown:
        import json

        rows = json.loads(args.out.read_text())
        plot(rows, args.out.with_suffix(".png"))
        print(markdown(rows))
        return
    torch.set_num_threads(1)  # as configs/demo.toml: fastest for models this small
    data = prepare_data(None, vocab_size=4096)
    names = args.models.split(",")
    rows: list[dict[str, Any]] = []
    if args.append and args.out.is_file():  # keep the other models' rows
        import json

        rows = [r for r in json.loads(args.out.read_text()) if r["model"] not in names]
    for name in names:
        rows += run_model(name, args, data)
        write_json(args.out, rows)
        plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
