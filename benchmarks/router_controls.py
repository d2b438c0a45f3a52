"""Do the new routers' controls do what they say in LM training? Measured side by side.

    python benchmarks/router_controls.py [--steps 200] [--runs benchmarks/runs/router_controls]

Trains ``configs/tiny.toml`` (same data, steps and seed for every run) with

- ``dtop_p`` at targets 1.5, 2 and 3: the mean experts per token k̄ over the second half
  of training against the target (the controller's job: within ±2%), and k̄ per layer
  (one shared p; layers differ through their learned logit scales);
- ``relu`` at target 2 with λ_0 = 1e-4: where the adaptive L1 weight takes k̄;
- ``deepseek_v3`` (k = 2) with the bias update on (u = 1e-3) and off (u = 0), both without
  the load-balance loss: the load imbalance max_i load_i / mean load of the trained
  model on validation batches (1.0 = balanced);

then writes ``benchmarks/results/router_controls.json`` and prints one table. Finished runs
are reused on a rerun. About 4 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from dynroute.checkpoints import load_model
from dynroute.common.jsonfile import write_json
from dynroute.data import iter_eval_batches
from dynroute.train import RunConfig
from dynroute.train.config import load_config
from dynroute.train.data import load_data
from dynroute.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

RUNS: dict[str, dict[str, Any]] = {
    "dtop_p target 1.5": {"router": "dtop_p:target=1.5", "target": 1.5},
    "dtop_p target 2": {"router": "dtop_p:target=2", "target": 2.0},
    "dtop_p target 3": {"router": "dtop_p:target=3", "target": 3.0},
    "relu target 2": {"router": "relu:target=2,l1_init=1e-4", "target": 2.0},
    "deepseek_v3 bias on": {"router": "deepseek_v3:k=2", "load_balance_weight": 0.0},
    "deepseek_v3 bias off": {
        "router": "deepseek_v3:k=2,bias_update_speed=0",
        "load_balance_weight": 0.0,
    },
}


def run_config(base: RunConfig, run: dict[str, Any], steps: int) -> RunConfig:
    raw = base.to_dict()
    model = {k: v for k, v in raw["model"].items() if k not in ("router", "k", "p")}
    model["router"] = run["router"]
    if "load_balance_weight" in run:
        model["load_balance_weight"] = run["load_balance_weight"]
    raw["model"] = model
    raw["train"].update(steps=steps, eval_interval=0, checkpoint_interval=steps, log_interval=5)
    return RunConfig.from_dict(raw)


def load_imbalance(run_dir: Path, val_tokens: Any, seq_len: int) -> list[float]:
    """max / mean tokens per expert, per MoE layer, over 8 validation batches."""
    model = load_model(run_dir).model.eval()
    counts: list[torch.Tensor] = []
    with torch.no_grad():
        for x, _ in iter_eval_batches(val_tokens, 8, seq_len, max_batches=8):
            out = model(x)
            layers = [a.routing.expert_counts().float() for a in out.aux]
            counts = layers if not counts else [c + n for c, n in zip(counts, layers, strict=True)]
    return [round(float(c.max() / c.mean()), 3) for c in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks/runs/router_controls")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: one thread is fastest
    base = load_config(ROOT / "configs/tiny.toml")
    half = args.steps // 2
    rows: dict[str, dict[str, Any]] = {}
    for name, run in RUNS.items():
        cfg = run_config(base, run, args.steps)
        out = args.runs / name.replace(" ", "_")
        started = time.perf_counter()
        result = train(cfg, out, progress=False, label=name)
        logged = [
            json.loads(line)
            for line in (out / "metrics.jsonl").open()
            if json.loads(line).get("kind") == "train"
        ]
        late = [r for r in logged if r["step"] > half]
        k_late = sum(r["mean_experts_per_token"] for r in late) / len(late)
        layers = [
            round(sum(r["experts_per_layer"][i] for r in late) / len(late), 3)
            for i in range(len(late[0]["experts_per_layer"]))
        ]
        row: dict[str, Any] = {
            "router": run["router"],
            "k_mean_second_half": round(k_late, 4),
            "k_per_layer_second_half": layers,
            "val_loss": round(result.final["val_loss"], 4) if result.final else None,
            "eval_mean_experts": round(result.final["mean_experts_per_token"], 4)
            if result.final
            else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if "target" in run:
            row["target"] = run["target"]
            row["relative_error"] = round(k_late / run["target"] - 1.0, 4)
        if name.startswith("deepseek"):
            data = load_data(cfg.data)
            row["load_imbalance_per_layer"] = load_imbalance(
                out, data.val_tokens, cfg.train.seq_len
            )
        rows[name] = row

    print(
        f"{'run':<22} {'k̄ (2nd half)':>13} {'target':>7} {'error':>7} {'per layer':>16} "
        f"{'val loss':>9} {'max/mean load':>14}"
    )
    for name, r in rows.items():
        err = f"{100 * r['relative_error']:+.1f}%" if "relative_error" in r else ""
        load = ", ".join(f"{v:.2f}" for v in r.get("load_imbalance_per_layer", []))
        print(
            f"{name:<22} {r['k_mean_second_half']:>13.3f} {r.get('target', ''):>7} {err:>7} "
            f"{r['k_per_layer_second_half']!s:>16} {r['val_loss']:>9} {load:>14}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": "configs/tiny.toml",
        "steps": args.steps,
        "machine": f"{platform.machine()} {platform.system()}, 1 thread",
        "runs": rows,
    }
    write_json(RESULTS / "router_controls.json", payload)


if __name__ == "__main__":
    main()
