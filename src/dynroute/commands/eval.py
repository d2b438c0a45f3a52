"""`dynroute eval`: validation loss, perplexity, experts per token and speed of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 20

Checkpoint = Annotated[
    Path,
    typer.Argument(
        help="A `dynroute train` --out folder, its model/ folder, or a transformers MoE checkpoint."
    ),
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, help="Windows per batch (default: the run's).")
]
SeqLen = Annotated[int | None, typer.Option(min=1, help="Window length (default: the run's).")]
MaxBatches = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Score N batches of windows evenly spaced over the text (default: the run's "
        "evaluation set; with --data, all of it).",
    ),
]
Generate = Annotated[
    bool, typer.Option("--generate", help="Also time greedy generation, KV cache vs none.")
]
NewTokens = Annotated[int, typer.Option(min=1, help="Tokens to generate.")]
Prompt = Annotated[
    str | None, typer.Option(help="Prompt text (default: start of the validation text).")
]
ExpertMemory = Annotated[
    str | None,
    typer.Option(
        help="Run with only this much of the experts resident (a share such as 50%, or a "
        "size such as 2GB); the rest load on demand (docs/offload.md). Adds an `offload` "
        "object (hit_rate, bytes_per_token, ...) to the result.",
    ),
]
ExpertPolicy = Annotated[
    str,
    typer.Option(help="Cache policy with --expert-memory: pregate, lru, lfu or reuse."),
]


@options.command
def eval_(
    checkpoint: Checkpoint,
    json_out: options.Json = False,
    data: options.Corpus = None,
    batch_size: BatchSize = None,
    seq_len: SeqLen = None,
    max_batches: MaxBatches = None,
    generate: Generate = False,
    new_tokens: NewTokens = 256,
    prompt: Prompt = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    expert_memory: ExpertMemory = None,
    expert_policy: ExpertPolicy = "pregate",
) -> None:
    """Evaluate CHECKPOINT; by default on the windows its training evaluated on.

    For a `dynroute train` run the default is the run's evaluation set, saved in
    RUN/model: eval_batches x batch_size windows of seq_len tokens, evenly spaced over
    the validation split, the same windows `dynroute train` logs and `dynroute
    analyze` reads, so the numbers agree. --max-batches N scores N batches evenly
    spaced over the whole validation split instead. --data: evaluate on this text
    instead (a file read whole, a folder or saved dataset by its validation split).
    """
    from contextlib import nullcontext

    from rich.console import Console

    from dynroute.checkpoints import load_model

    options.set_threads(threads)
    show = progress and not json_out
    loaded = load_model(checkpoint)
    offload = None
    if expert_memory is not None:  # before anything runs: a bad budget fails at once
        from dynroute.offload import offload_experts

        offload = offload_experts(loaded.model, expert_memory, policy=expert_policy)
    generation = None
    if generate:  # first: a bad --prompt fails before the evaluation runs
        from dynroute.train.generate import generation_report

        busy = f"generating {new_tokens} tokens, with and without cache"
        with Console(stderr=True).status(busy) if show else nullcontext():
            generation = generation_report(loaded, new_tokens, prompt)
    result = evaluate(loaded, data, batch_size, seq_len, max_batches, show)
    result["checkpoint"] = str(checkpoint)
    if generation is not None:
        result["generation"] = generation
    if offload is not None:
        offload.close()
        result["offload"] = offload.summary()
        if not json_out:
            Console(stderr=True).print(offload.summary_line(), markup=False)
    if json_out:
        options.print_json(result)
        return
    console = Console()
    options.print_table(result_table(result), console)
    if "eval_set" in result:
        console.print(f"evaluated on {result['eval_set']}", markup=False)


def evaluate(
    loaded: Any,
    data: str | None,
    batch_size: int | None,
    seq_len: int | None,
    max_batches: int | None,
    progress: bool,
) -> dict[str, Any]:
    """The metrics of a loaded dynroute model or transformers MoE."""
    from dynroute.hf import evaluate_text
    from dynroute.train.evaluate import evaluate_checkpoint

    if loaded.kind == "hf-moe":  # a transformers MoE, patched or not
        return evaluate_text(  # type: ignore[no-any-return]
            loaded.model, data, tokenizer=loaded.tokenizer, batch_size=batch_size or 4,
            seq_len=seq_len or 512, max_batches=max_batches, progress=progress,
        )  # fmt: skip
    return evaluate_checkpoint(loaded, data, batch_size, seq_len, max_batches, progress)


def result_table(result: dict[str, Any]) -> Any:
    """The terminal table of one evaluation (and of the generation timing, when there)."""
    versus = result.get("param_ratio_reference", "top-2")
    rows = [
        ("validation loss", f"{result['val_loss']:.4f}"),
        ("perplexity", f"{result['perplexity']:.2f}"),
        ("mean experts / token", f"{result['mean_experts_per_token']:.3f}"),
        ("experts / token per layer", " ".join(f"{v:.2f}" for v in result["experts_per_layer"])),
        (f"activated params vs {versus}", f"{result['activated_param_ratio']:.3f}"),
        (f"expert params vs {versus}", f"{result['expert_param_ratio']:.3f}"),
        ("tokens / s (forward)", f"{result['tokens_per_second']:,.0f}"),
        ("evaluated tokens", f"{result['eval_tokens']:,}"),
    ]
    if "generation" in result:
        from dynroute.train.generate import generation_rows

        rows += generation_rows(result["generation"])
    title = f"{result['checkpoint']} ({result['router']})"
    return options.table(title, ("metric", "value"), rows)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
