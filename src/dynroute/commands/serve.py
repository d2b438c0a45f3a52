"""`dynroute serve MODEL_DIR`: an OpenAI-compatible HTTP server for one model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: object) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {message}", markup=True)
    return typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model_dir: Annotated[
            Path,
            typer.Argument(
                help="A `dynroute train` run, its model/ folder, or a transformers MoE "
                "checkpoint (anything `dynroute eval` reads)."
            ),
        ],
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
            "127.0.0.1"
        ),
        name: Annotated[
            str | None, typer.Option(help="Model id clients send (default: the folder name).")
        ] = None,
        max_batch: Annotated[
            int, typer.Option(min=1, help="Most concurrent requests per generate call.")
        ] = 8,
        batch_wait_ms: Annotated[
            float, typer.Option(min=0.0, help="How long an idle server waits to fill a batch.")
        ] = 5.0,
        device: Annotated[
            str, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")
        ] = "auto",
        threads: Annotated[
            int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")
        ] = None,
        access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    ) -> None:
        """Serve MODEL_DIR with the OpenAI API (completions, chat, models, health)."""
        import torch

        from dynroute.serve.app import create_app
        from dynroute.serve.loading import load_served_model
        from dynroute.serve.runner import check_port, run_app

        try:
            check_port(host, port)
        except OSError as err:
            raise _fail(err) from None
        if threads is not None:
            torch.set_num_threads(threads)
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            served = load_served_model(model_dir, name, dev)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise _fail(err) from None
        app_ = create_app(served, max_batch=max_batch, wait_ms=batch_wait_ms)
        banner = (
            f"serving {served.name} ({served.folder}, {dev}, context {served.context_length}) "
            f"on http://{host}:{port}/v1"
        )
        run_app(app_, host, port, banner, access_log)
