"""`dynroute serve MODEL_DIR`: an OpenAI-compatible HTTP server for one model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dynroute.commands import options

RANK = 50

ModelDir = Annotated[
    Path,
    typer.Argument(
        help="A `dynroute train` run, its model/ folder, or a transformers MoE checkpoint "
        "(anything `dynroute eval` reads)."
    ),
]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
Host = Annotated[str, typer.Option(help="Address to bind (loopback by default).")]
Name = Annotated[str | None, typer.Option(help="Model id clients send (default: the folder name).")]
MaxBatch = Annotated[int, typer.Option(min=1, help="Most concurrent requests per generate call.")]
BatchWait = Annotated[
    float, typer.Option(min=0.0, help="How long an idle server waits to fill a batch.")
]
AccessLog = Annotated[bool, typer.Option(help="Log every request.")]
MaxPrompts = Annotated[
    int, typer.Option(min=1, help="Most prompts in one /v1/completions request (more: 400).")
]

MaxPromptTokens = Annotated[
    int | None,
    typer.Option(min=1, help="Most tokens in one prompt (more: 400). Default: the context."),
]
RequestTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.0, help="Seconds a generation may take; longer: stopped, 504 (a stream: an error)."
    ),
]


ExpertMemory = Annotated[
    str | None,
    typer.Option(
        help="Keep only this much of the experts in memory (a share such as 50%, or a size "
        "such as 2GB); the rest load on demand with pre-gating prefetch (docs/offload.md).",
    ),
]


@options.command
def serve(
    model_dir: ModelDir,
    port: Port = 8000,
    host: Host = "127.0.0.1",
    name: Name = None,
    max_batch: MaxBatch = 8,
    batch_wait_ms: BatchWait = 5.0,
    device: options.Device = None,
    threads: options.Threads = None,
    access_log: AccessLog = False,
    api_key: options.ApiKeys = None,
    api_key_file: options.ApiKeyFile = None,
    allow_no_key: options.AllowNoKey = False,
    max_body_bytes: options.MaxBodyBytes = 1_000_000,
    max_prompts: MaxPrompts = 64,
    max_concurrent: options.MaxConcurrent = 0,
    drain_timeout: options.DrainTimeout = 30.0,
    max_prompt_tokens: MaxPromptTokens = None,
    max_tokens_cap: options.MaxTokensCap = None,
    request_timeout: RequestTimeout = None,
    expert_memory: ExpertMemory = None,
) -> None:
    """Serve MODEL_DIR with the OpenAI API (completions, chat, models, health).

    With --api-key (or --api-key-file, DYNROUTE_API_KEY) every path but /health needs
    'Authorization: Bearer KEY'; a non-loopback --host without a key is refused unless
    --allow-no-key.
    """
    from dynroute.serve.app import create_app
    from dynroute.serve.loading import load_served_model
    from dynroute.serve.model_routes import ModelLimits
    from dynroute.serve.runner import check_port, run_app
    from dynroute.train.device import resolve_device

    keys = options.server_keys(host, api_key, api_key_file, allow_no_key)
    check_port(host, port)  # before the model loads: a busy port is a one-line error at once
    options.set_threads(threads)
    dev = str(resolve_device(device or "auto"))  # auto: CUDA when present
    served = load_served_model(model_dir, name, dev)
    offload = None
    if expert_memory is not None:
        from dynroute.offload import offload_experts

        offload = offload_experts(served.model, expert_memory, policy="pregate")
    limits = ModelLimits(
        max_body_bytes=max_body_bytes, max_prompts=max_prompts, request_timeout_s=request_timeout,
        max_prompt_tokens=max_prompt_tokens, max_tokens_cap=max_tokens_cap,
    )  # fmt: skip
    app_ = create_app(
        served, max_batch=max_batch, wait_ms=batch_wait_ms, api_keys=keys, limits=limits,
        max_concurrent=max_concurrent,
    )  # fmt: skip
    banner = (
        f"serving {served.name} ({served.folder}, {dev}, context {served.context_length}) "
        f"on http://{host}:{port}/v1{' (API key required)' if keys else ''}"
    )
    if offload is not None:
        banner += f"; {offload.summary_line()}"
    run_app(app_, host, port, banner, access_log, drain_timeout_s=drain_timeout)
    if offload is not None:
        offload.close()
        print(offload.summary_line(), file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
