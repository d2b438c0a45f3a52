"""`dynroute profile`: measure collectives, expert GEMMs and per-row tasks; write a profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 52

Procs = Annotated[
    int,
    typer.Option(help="Local gloo processes to measure (ignored under torchrun: the job's)."),
]
Nnodes = Annotated[
    int,
    typer.Option(help="Declare the processes as this many nodes (consecutive ranks a node) "
                 "and measure the intra-node and inter-node groups too."),
]  # fmt: skip
Out = Annotated[Path, typer.Option(help="Profile JSON to write (read by dynroute plan --profile).")]
Sizes = Annotated[
    str, typer.Option(help="Message sizes in bytes (each rank's buffer), comma-separated.")
]
Repeats = Annotated[int, typer.Option(help="Timed runs per size (the median is kept).")]
Rows = Annotated[
    str, typer.Option(help="Rows per grouped-GEMM / per-row measurement, comma-separated.")
]
DModel = Annotated[int, typer.Option(help="d_model of the GEMM measurement (your model's).")]
DFF = Annotated[int, typer.Option(help="d_ff of the GEMM measurement (your model's).")]


@options.command
def profile(
    out: Out = Path("profile.json"),
    procs: Procs = 2,
    nnodes: Nnodes = 1,
    sizes: Sizes = "4096,16384,65536,262144,1048576",
    repeats: Repeats = 5,
    rows: Rows = "64,256,1024",
    d_model: DModel = 64,
    d_ff: DFF = 256,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Time all-to-all, all-reduce, all-gather, the grouped expert GEMMs and gate/order/inverse order on this machine; fit time = α + β·size and write OUT."""  # noqa: E501 (one line for --help)
    from dynroute.parallel import profile as profiling
    from dynroute.parallel.runtime import init_from_env, is_launched

    options.check_threads(threads)
    byte_sizes = parse_sizes(sizes)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if d_model < 1 or d_ff < 1:
        raise ValueError(f"--d-model and --d-ff must be >= 1, got {d_model}, {d_ff}")
    gemm = (parse_sizes(rows, "--rows"), d_model, d_ff, 2)
    if is_launched():  # a real job (NCCL on GPUs): every rank measures, rank 0 writes
        options.set_threads(threads)
        ctx = init_from_env()
        result = profiling.profile_ranks(ctx, nnodes, byte_sizes, repeats, gemm)
        if not ctx.is_main:
            return
        result.save(out)
    else:
        text = f"profiling {procs} processes as {nnodes} node(s)"
        with options.status(text, progress and not json_out):
            result = profiling.run_profile(procs, nnodes, out, byte_sizes, repeats, gemm,
                                           threads=threads or 1)  # fmt: skip
    summary = summarize(result, out)
    if json_out:
        options.print_json(summary)
        return
    rows = [(name, _us(fit["alpha_s"]), _per(fit["beta_s_per_unit"], unit))
            for name, unit, fit in summary["fits"]]  # fmt: skip
    options.print_table(options.table(f"profile of {result.machine} -> {out}",
                                      ["fit", "α (µs)", "β"], rows))  # fmt: skip


def parse_sizes(text: str, flag: str = "--sizes") -> list[int]:
    """``--sizes`` (or ``flag``) as positive integers.

    Example:
        >>> parse_sizes("4096, 65536")
        [4096, 65536]
    """
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give counts separated by commas") from None
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"{flag} {text!r}: give positive counts separated by commas")
    return sizes


def summarize(result: Any, out: Path) -> dict[str, Any]:
    """What the command prints: where, and every fit as (name, unit, α/β)."""
    fits = [
        (f"{name} ({link})", "bytes", f.to_dict())
        for link, by_name in result.collectives.items()
        for name, f in by_name.items()
    ]
    if result.hierarchical_exchange is not None:
        fits.append(("hierarchical all_to_all (whole)", "bytes",
                     result.hierarchical_exchange.to_dict()))  # fmt: skip
    computed = {"gemm": result.gemm, "gemm backward": result.gemm_backward,
                "dense": result.dense, "dense backward": result.dense_backward}  # fmt: skip
    fits += [(name, "flops", f.to_dict()) for name, f in computed.items() if f is not None]
    fits += [(name, "flops" if name == "gate" else "bytes", f.to_dict())
             for name, f in result.row_tasks.items()]  # fmt: skip
    return {"out": str(out), "machine": result.machine, "world_size": result.world_size,
            "nnodes": result.nnodes, "backend": result.backend, "fits": fits}  # fmt: skip


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def _per(beta: float, unit: str) -> str:
    if unit == "bytes":
        return "∞ GB/s" if beta <= 0 else f"{1 / beta / 1e9:.3g} GB/s"
    return "∞ TFLOP/s" if beta <= 0 else f"{1 / beta / 1e12:.3g} TFLOP/s"


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
