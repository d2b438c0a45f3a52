"""Train every (point, seed) of a frontier sweep as an ordinary ``dynroute train`` run.

Each run lives in ``out/<point>-s<seed>/``: a finished one is reused (and reported as
reused), an interrupted one resumes from its checkpoint, bit for bit, so killing a
sweep loses at most one checkpoint interval. Every run is evaluated once, at its last
step, by the training loop itself on ``eval_batches`` batches of windows evenly spaced
over the held-out split: the same tokens for every run, and the numbers the table,
plot and verdict show.

Example:
    >>> from dynroute.train import load_config
    >>> base = load_config("configs/demo.toml")                       # doctest: +SKIP
    >>> recs = run_frontier(base, sweep_points(["top_k"]), [0, 1, 2], "runs/f")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from dynroute.frontier.sweep import Point
from dynroute.frontier.verdict import expert_flops_per_token, record
from dynroute.models import DynMoEConfig
from dynroute.train.compute import TrainingCompute
from dynroute.train.config import RunConfig

__all__ = ["check_frontier_config", "point_config", "run_dir", "run_frontier", "training_fields"]


def point_config(base: RunConfig, point: Point, seed: int) -> RunConfig:
    """``base`` with the point's router and ``seed``; only the final evaluation runs.

    Example:
        >>> cfg = point_config(RunConfig(), Point("top_k", {"name": "top_k", "k": 1}), 3)
        >>> cfg.model["router"], cfg.train.seed, cfg.train.eval_interval
        ({'name': 'top_k', 'k': 1}, 3, 0)
    """
    raw = base.to_dict()
    raw["model"] = {k: v for k, v in raw["model"].items() if k not in _FLAT_ROUTER_KEYS}
    raw["model"]["router"] = dict(point.router)
    raw["train"]["seed"] = seed
    raw["train"]["eval_interval"] = 0  # the frontier needs the last step's loss only
    return RunConfig.from_dict(raw)


# flat router keys of a config ([model] k = 2, p = 0.4) would be folded into the router
_FLAT_ROUTER_KEYS = ("k", "p", "max_experts", "normalize", "num_null", "capacity_factor")


def run_dir(out: Path | str, point: Point, seed: int) -> Path:
    """Folder of one run: ``out/<point name>-s<seed>``.

    Example:
        >>> run_dir("runs/f", Point("top_k", {"name": "top_k", "k": 2}), 1).as_posix()
        'runs/f/top_k-k2-s1'
    """
    return Path(out) / f"{point.name}-s{seed}"


def check_frontier_config(base: RunConfig, points: Sequence[Point], seeds: Sequence[int]) -> None:
    """Every check that can fail after training started, before anything is trained or
    written: the run settings, the corpus, the points and seeds.

    Raises:
        ValueError / FileNotFoundError: with a one-line message.

    Example:
        >>> check_frontier_config(RunConfig(), [Point("top_k", {"name": "top_k", "k": 2})], [0])
        Traceback (most recent call last):
        ...
        ValueError: the frontier needs at least two top_k settings (top_k:k=1, top_k:k=2); got 1
    """
    t = base.train
    for name, value, low in (
        ("steps", t.steps, 1),
        ("batch_size", t.batch_size, 1),
        ("seq_len", t.seq_len, 2),
        ("eval_batches", t.eval_batches or 1, 1),
        ("threads", t.threads or 0, 0),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    source = base.data.source
    if source != "stdlib" and not Path(source).exists():
        raise FileNotFoundError(
            f"corpus {source} does not exist; pass --data with a text file or folder"
        )
    ks = {p.name for p in points if p.is_frontier}
    if len(ks) < 2:
        raise ValueError(
            f"the frontier needs at least two top_k settings (top_k:k=1, top_k:k=2); got {len(ks)}"
        )
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"router setting(s) listed twice: {', '.join(dup)}")
    experts = int(base.model.get("num_experts", 8))
    for point in points:
        cfg = point_config(base, point, seeds[0])
        try:  # builds the router and checks the model's shape rules, no weights
            DynMoEConfig(vocab_size=base.data.vocab_size, **cfg.model)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{point.label}: {err}") from None
        k = point.router.get("k") if point.router["name"] == "top_k" else None
        if isinstance(k, int) and not 1 <= k <= experts:
            raise ValueError(f"{point.label}: k must be between 1 and num_experts ({experts})")


def training_fields(compute: TrainingCompute | None, d_model: int, d_ff: int) -> dict[str, Any]:
    """What a record keeps of the run's training expert compute: the mean k̄ over training
    (per layer and overall), the steps it covers and the training expert FLOPs per
    training token (the final view's axis, with k̄ averaged over training).

    Example:
        >>> f = training_fields(TrainingCompute((300.0, 200.0), 100), 128, 256)
        >>> f["training_mean_experts_per_token"], f["training_expert_flops"]
        (2.5, 983040.0)
    """
    if compute is None or not compute.steps:  # not counted: the view leaves it out
        return {}
    return {
        "training_mean_experts_per_token": compute.mean_experts,
        "training_experts_per_layer": compute.experts_per_layer,
        "training_steps_counted": compute.steps,
        "training_expert_flops": expert_flops_per_token(d_model, d_ff, compute.experts_per_layer),
    }


def run_frontier(
    base: RunConfig,
    points: Sequence[Point],
    seeds: Sequence[int],
    out: Path | str,
    progress: bool = True,
    console: Console | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reuse, or resume) every point with every seed; one record per run.

    Args:
        base: shared config: data, model size, steps, batch and the evaluation set
            (``[train] eval_batches`` windows of ``batch_size x seq_len``).
        points: router settings; seeds: every point trains once per seed.
        out: parent folder of the run folders.
        progress: per-run progress bars; console: where the run list is printed.
        on_run: called with each record as soon as its run is done (to save partial
            results).

    Returns:
        list: :func:`~dynroute.frontier.verdict.record` dicts with ``reused``,
        ``run_dir``, ``eval_tokens``, ``experts_per_layer``, ``train_tokens``,
        ``train_seconds`` and :func:`training_fields` added.
    """
    from dynroute.train.loop import train

    check_frontier_config(base, points, seeds)
    console = console or Console(stderr=True)
    d_model, d_ff = int(base.model.get("d_model", 128)), int(base.model.get("d_ff", 256))
    jobs = [(p, s) for s in seeds for p in points]  # seed-major: a frontier per seed early
    records = []
    for i, (point, seed) in enumerate(jobs, 1):
        cfg = point_config(base, point, seed)
        folder = run_dir(out, point, seed)
        tag = f"[{i}/{len(jobs)}] {point.label} seed {seed}"
        result = train(cfg, folder, progress=progress, label=f"{point.name}-s{seed}")
        final = result.final
        if final is None:  # pragma: no cover - train() always evaluates a finished run
            raise RuntimeError(f"{folder}: finished without a final evaluation")
        reused = result.resumed_from >= cfg.train.steps
        state = "reused (finished earlier)" if reused else f"trained in {result.seconds:.0f} s"
        if 0 < result.resumed_from < cfg.train.steps:
            state += f", resumed from step {result.resumed_from}"
        console.print(
            f"{tag}: {state}; val loss {final['val_loss']:.4f}, "
            f"{final['mean_experts_per_token']:.2f} experts/token",
            soft_wrap=True,  # one line per run, also in a log (no fold at 80 columns)
            markup=False,
        )
        flops = expert_flops_per_token(d_model, d_ff, final["experts_per_layer"])
        rec = record(
            point.family, point.name, point.label, seed, final["val_loss"], flops,
            final["mean_experts_per_token"], target=point.target, router=dict(point.router),
            reused=reused, run_dir=str(folder), eval_tokens=final["eval_tokens"],
            experts_per_layer=final["experts_per_layer"], train_tokens=result.tokens,
            train_seconds=None if reused else result.seconds,
            **training_fields(result.training_compute, d_model, d_ff),
        )  # fmt: skip
        records.append(rec)
        if on_run is not None:
            on_run(rec)
    return records
