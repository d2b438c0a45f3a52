"""Train several routers on the same data, seed and token budget; evaluate and compare.

The engine behind ``dynroute demo`` (top-2 vs top-p) and
``benchmarks/replicate_topp.py``. Every run is an ordinary ``dynroute train`` run
folder, so an interrupted comparison resumes where it stopped and finished runs are
not retrained.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynroute.common.files import atomic_write_text
from dynroute.routing import parse_router
from dynroute.train.config import RunConfig
from dynroute.train.evaluate import evaluate_checkpoint
from dynroute.train.loop import train
from dynroute.train.metrics import read_metrics

__all__ = [
    "Variant",
    "compare_routers",
    "format_report",
    "plot_curves",
    "summary_row",
]


@dataclass(frozen=True)
class Variant:
    """One router setting to train.

    Attributes:
        name: folder and label, e.g. ``"top2"``.
        model: ``[model]`` overrides, e.g. ``{"router": "top_p", "p": 0.4}``.
        seed: overrides ``[train] seed`` when not None.
    """

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def config(self, base: RunConfig) -> RunConfig:
        """``base`` with this variant's model settings and seed applied.

        Example:
            >>> Variant("p", {"router": "top_p"}, seed=2).config(RunConfig()).train.seed
            2
        """
        raw = base.to_dict()
        raw["model"].update(self.model)
        if self.seed is not None:
            raw["train"]["seed"] = self.seed
        return RunConfig.from_dict(raw)

    def label(self) -> str:
        """Human-readable router description, e.g. ``top_p(p=0.4)``.

        Example:
            >>> Variant("a", {"router": "top_p", "p": 0.4}).label()
            'top_p(p=0.4)'
        """
        router = self.model.get("router", "top_k")
        params = {k: v for k, v in self.model.items() if k != "router"}
        if not isinstance(router, str) or ":" in router:  # {"name": ..., **params} forms
            spec = parse_router(router) if isinstance(router, str) else dict(router)
            router, params = spec.pop("name"), {**spec, **params}
        return f"{router}({', '.join(f'{k}={v}' for k, v in params.items())})"


def _train_throughput(run: Path) -> float:
    rates = [r["tokens_per_second"] for r in read_metrics(run / "metrics.jsonl", "train")]
    return statistics.median(rates) if rates else float("nan")


def compare_routers(
    base: RunConfig,
    variants: list[Variant],
    out_dir: Path | str,
    final_eval_batches: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Train each variant into ``out_dir/<name>`` (resuming/skipping done runs) and evaluate.

    Args:
        base: shared config (same data, model size, steps, batch, seed unless a variant
            sets one).
        variants: router settings to compare.
        out_dir: parent folder of the run folders.
        final_eval_batches: validation batches of the final evaluation (None: all).
        progress: show progress bars.

    Returns:
        dict: variant name -> evaluation metrics (see ``evaluate_checkpoint``) plus
        ``label``, ``train_tokens``, ``train_tokens_per_second``, ``seed``, ``run_dir``.
    """
    out_dir = Path(out_dir)
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        cfg = variant.config(base)
        run = out_dir / variant.name
        result_file = run / "final_eval.json"
        trained = train(cfg, run, progress=progress, label=f"{variant.name:>10}")
        metrics = json.loads(result_file.read_text()) if result_file.is_file() else {}
        already_done = trained.resumed_from == cfg.train.steps  # nothing trained just now
        same_eval = metrics.get("final_eval_batches", final_eval_batches) == final_eval_batches
        if not (already_done and metrics and same_eval):
            metrics = evaluate_checkpoint(run, max_batches=final_eval_batches)
            metrics["final_eval_batches"] = final_eval_batches
            atomic_write_text(result_file, json.dumps(metrics, indent=2))
        results[variant.name] = {
            **metrics,
            "label": variant.label(),
            "seed": cfg.train.seed,
            "train_tokens": trained.tokens,
            "train_tokens_per_second": _train_throughput(run),
            "run_dir": str(run),
        }
    return results


def summary_row(name: str, r: dict[str, Any]) -> list[str]:
    """Table cells for one run: name, router, loss, ppl, experts, ratios, speeds.

    Example:
        >>> r = {"label": "top_k(k=2)", "val_loss": 2.0, "perplexity": 7.39,
        ...      "mean_experts_per_token": 2.0, "activated_param_ratio": 1.0,
        ...      "expert_param_ratio": 1.0, "train_tokens_per_second": 5000.0,
        ...      "tokens_per_second": 20000.0}
        >>> summary_row("top2", r)[:4]
        ['top2', 'top_k(k=2)', '2.0000', '7.39']
    """
    return [
        name,
        r["label"],
        f"{r['val_loss']:.4f}",
        f"{r['perplexity']:.2f}",
        f"{r['mean_experts_per_token']:.3f}",
        f"{r['activated_param_ratio']:.3f}",
        f"{r['expert_param_ratio']:.3f}",
        f"{r['train_tokens_per_second']:,.0f}",
        f"{r['tokens_per_second']:,.0f}",
    ]


SUMMARY_HEADER = [
    "run",
    "router",
    "val loss",
    "perplexity",
    "experts/token",
    "activated params vs top-2",
    "expert params vs top-2",
    "train tok/s",
    "eval tok/s",
]


SHORT_HEADER = [
    "run",
    "router",
    "val\nloss",
    "ppl",
    "experts\n/token",
    "act.\nparams",
    "expert\nparams",
    "train\ntok/s",
    "eval\ntok/s",
]
"""Column names for narrow terminals (the ratios are relative to top-2)."""


def plot_curves(runs: dict[str, Path], path: Path | str, title: str = "") -> Path:
    """PNG with validation loss vs training tokens and mean experts per token over training.

    Args:
        runs: label -> run folder (reads its ``metrics.jsonl``).
        path: output ``.png``.

    Returns:
        Path: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynroute.analysis.plots import save_figure

    fig, (ax_loss, ax_k) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in runs.items():
        evals = read_metrics(Path(run) / "metrics.jsonl", "eval")
        trains = read_metrics(Path(run) / "metrics.jsonl", "train")
        ax_loss.plot(
            [r["tokens"] for r in evals], [r["val_loss"] for r in evals], marker="o", label=label
        )
        ax_k.plot(
            [r["tokens"] for r in trains],
            [r["mean_experts_per_token"] for r in trains],
            label=label,
        )
    ax_loss.set(xlabel="training tokens", ylabel="validation loss (nats)", title="validation loss")
    ax_k.set(
        xlabel="training tokens",
        ylabel="mean experts per token",
        title="experts per token (training batches)",
    )
    ax_k.set_ylim(bottom=0)
    for ax in (ax_loss, ax_k):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def format_report(
    results: dict[str, dict[str, Any]], base: RunConfig, plot_name: str, title: str
) -> str:
    """Markdown report: settings, results table, plot, verdict, and a slot for analysis.

    Example:
        >>> "| run |" in format_report({}, RunConfig(), "curves.png", "demo")
        True
    """
    m, t, d = base.model, base.train, base.data
    lines = [
        f"# {title}",
        "",
        f"Corpus `{d.source}` (vocab {d.vocab_size}); model d_model={m.get('d_model')}, "
        f"{m.get('n_layers')} layers, {m.get('num_experts')} experts of width {m.get('d_ff')}, "
        f"MoE every {m.get('moe_every', 1)} layer(s); {t.steps} steps x "
        f"{t.batch_size}x{t.seq_len} tokens = {t.steps * t.tokens_per_step:,} training tokens "
        f"per run, seed {t.seed}; α={m.get('load_balance_weight', 1e-2)}, "
        f"β={m.get('dynamic_weight', 1e-4)}.",
    ]
    if results:
        n_eval = next(iter(results.values())).get("eval_tokens", 0)
        lines.append(
            f"Validation: the first {n_eval:,} tokens of the held-out split (same windows for "
            "every run). Tokens/s are wall-clock medians and move with machine load."
        )
    lines += [
        "",
        "| " + " | ".join(SUMMARY_HEADER) + " |",
        "|" + "---|" * len(SUMMARY_HEADER),
    ]
    lines += ["| " + " | ".join(summary_row(n, r)) + " |" for n, r in results.items()]
    lines += [
        "",
        "Activated params: non-embedding parameters a token uses (attention, norms, routers and "
        "its experts), relative to the same model under top-2. Expert params: the experts' "
        "share alone (mean experts per token / 2).",
        "",
        f"![validation loss and experts per token]({plot_name})",
        "",
    ]
    names = list(results)
    if len(names) >= 2:
        ref, other = results[names[0]], results[names[1]]
        delta = other["val_loss"] - ref["val_loss"]
        verdict = "matches or beats" if delta <= 0.01 else "trails"
        lines += [
            "## Verdict",
            "",
            f"{names[1]} ({other['label']}) {verdict} {names[0]} ({ref['label']}): validation "
            f"loss {other['val_loss']:.4f} vs {ref['val_loss']:.4f} (Δ {delta:+.4f} nats) with "
            f"{other['mean_experts_per_token']:.2f} vs {ref['mean_experts_per_token']:.2f} "
            f"experts per token ({100 * other['activated_param_ratio']:.1f}% of the activated "
            "parameters). One seed at this scale: differences below ~0.02 nats are noise.",
            "",
        ]
    lines += [
        "## Routing analysis",
        "",
        "<!-- dynroute:analysis -->",
        "(`dynroute analyze` adds a link to its report here.)",
        "",
    ]
    return "\n".join(lines)
