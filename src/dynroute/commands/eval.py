"""`dynroute eval`: validation loss, perplexity, experts per token and speed of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        checkpoint: Annotated[
            Path, typer.Argument(help="A `dynroute train` --out folder or its model/ folder.")
        ],
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        data: Annotated[
            str | None,
            typer.Option(
                help="Evaluate on this text instead: a file is read whole, a folder or saved "
                "dataset by its validation split (the same for dynroute runs and "
                "transformers models)."
            ),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option(min=1, help="Windows per batch (default: the run's).")
        ] = None,
        seq_len: Annotated[
            int | None, typer.Option(min=1, help="Window length (default: the run's).")
        ] = None,
        max_batches: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Score N batches of windows evenly spaced over the text (default: the "
                "run's evaluation set; with --data, all of it).",
            ),
        ] = None,
        # generation speed (dynroute.train.generate)
        generate: Annotated[
            bool, typer.Option("--generate", help="Also time greedy generation, KV cache vs none.")
        ] = False,
        new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 256,
        prompt: Annotated[
            str | None, typer.Option(help="Prompt text (default: start of the validation text).")
        ] = None,
    ) -> None:
        """Evaluate CHECKPOINT; by default on the windows its training evaluated on.

        For a `dynroute train` run the default is the run's evaluation set, saved in
        RUN/model: eval_batches x batch_size windows of seq_len tokens, evenly spaced over
        the validation split, the same windows `dynroute train` logs and `dynroute
        analyze` reads, so the numbers agree. --max-batches N scores N batches evenly
        spaced over the whole validation split instead.
        """
        import json
        from contextlib import nullcontext

        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from dynroute.checkpoints import load_model
        from dynroute.hf import evaluate_text
        from dynroute.train.evaluate import evaluate_checkpoint

        console = Console()
        try:
            loaded = load_model(checkpoint)
            generation = None
            if generate:  # first: a bad --prompt fails before the evaluation runs
                from dynroute.train.generate import generation_report

                busy = f"generating {new_tokens} tokens, with and without cache"
                with nullcontext() if json_out else console.status(busy):
                    generation = generation_report(loaded, new_tokens, prompt)
            if loaded.kind == "hf-moe":  # a transformers MoE, patched or not
                result = evaluate_text(
                    loaded.model,
                    data,
                    tokenizer=loaded.tokenizer,
                    batch_size=batch_size or 4,
                    seq_len=seq_len or 512,
                    max_batches=max_batches,
                    progress=not json_out,
                )
            else:
                result = evaluate_checkpoint(
                    loaded, data, batch_size, seq_len, max_batches, progress=not json_out
                )
            result["checkpoint"] = str(checkpoint)
            if generation is not None:
                result["generation"] = generation
        except (FileNotFoundError, ValueError) as err:
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        if json_out:
            print(json.dumps(result))
            return
        table = Table(title=f"{checkpoint} ({result['router']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        rows = [
            ("validation loss", f"{result['val_loss']:.4f}"),
            ("perplexity", f"{result['perplexity']:.2f}"),
            ("mean experts / token", f"{result['mean_experts_per_token']:.3f}"),
            (
                "experts / token per layer",
                " ".join(f"{v:.2f}" for v in result["experts_per_layer"]),
            ),
            ("activated params vs top-2", f"{result['activated_param_ratio']:.3f}"),
            ("expert params vs top-2", f"{result['expert_param_ratio']:.3f}"),
            ("tokens / s (forward)", f"{result['tokens_per_second']:,.0f}"),
            ("evaluated tokens", f"{result['eval_tokens']:,}"),
        ]
        if "generation" in result:
            from dynroute.train.generate import generation_rows

            rows += generation_rows(result["generation"])
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        if "eval_set" in result:
            console.print(f"evaluated on {escape(result['eval_set'])}")
