"""`dynroute bench`: the compute–quality frontier, and the MoE layer speed suite."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

LAYER_LEGEND = (
    "✅ / ❌ in the layer tables: ✅ when dynroute's time for a cell (forward, or forward + "
    "backward) is within the target multiple of the *bound*, the time of one dense SwiGLU "
    "GEMM chain over the same A = N·k̄ routed rows (arithmetic no MoE layer can avoid): "
    "≤ 1.10 × for N ≥ 512 tokens, ≤ 1.5 × below; ❌ otherwise. '× floor' compares with the "
    "per-expert GEMMs alone on pre-sorted rows (what any grouped dispatch must run), "
    "'× best hf' with the fastest transformers expert implementation measured in the same "
    "cell (below 1 = dynroute faster)."
)
REPO_ROOT = Path(__file__).resolve().parents[3]


def error_exit(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (one line, no markup parsing) on stderr; the Exit to raise."""
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "red"), message))
    return typer.Exit(code)


@contextlib.contextmanager
def interrupted(out: Path) -> Iterator[None]:
    """Turn Ctrl-C into one line saying that a rerun resumes (exit status 130)."""
    try:
        yield
    except KeyboardInterrupt:
        raise error_exit(
            f"interrupted; finished runs are kept in {out}: rerun the same command to resume",
            130,
        ) from None


def layer_script(cwd: Path | None = None) -> Path | None:
    """``benchmarks/layer.py`` of the source checkout this package runs from, or of ``cwd``."""
    for root in (REPO_ROOT, cwd or Path.cwd()):
        script = root / "benchmarks" / "layer.py"
        if script.is_file():
            return script
    return None


def register(app: typer.Typer) -> None:
    bench = typer.Typer(
        help="Benchmarks: the compute–quality frontier of routers, the MoE layer's speed.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.add_typer(bench, name="bench")

    @bench.command()
    def frontier(
        routers: Annotated[
            list[str] | None,
            typer.Option(
                help="Sweep families (top_k, top_p, top_p_normalized, null_experts, dtop_p, "
                "...: their knob at each --targets k̄) or single settings (top_p:p=0.4); "
                "repeat or comma-separate. Default: every family of the sweep table."
            ),
        ] = None,
        seeds: Annotated[int, typer.Option(help="Seeds per setting (0, 1, ...).")] = 3,
        steps: Annotated[int | None, typer.Option(help="Training steps per run.")] = None,
        out: Annotated[Path, typer.Option(help="Folder of the run folders.")] = Path(
            "runs/frontier"
        ),
        results: Annotated[
            Path | None,
            typer.Option(help="Results JSON (plot beside it); default OUT/frontier.json."),
        ] = None,
        targets: Annotated[
            str, typer.Option(help="k̄ the sweeps aim at, comma-separated.")
        ] = "1,1.5,2,3",
        config: Annotated[
            Path | None, typer.Option(help="Run config (default configs/demo.toml).")
        ] = None,
        data: Annotated[str | None, typer.Option(help="Corpus (default: the config's).")] = None,
        threads: Annotated[int | None, typer.Option(help="CPU threads (0: torch's).")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        """Train router settings on the same data, steps and seeds; judge them against top-k.

        The frontier is top-k's points (k = 1, 2, 3) joined in the plane of validation loss
        vs active expert FLOPs per token (measured k̄ × MoE layers × 6·d_model·d_ff); a
        setting beats it when it lies below by more than 2 standard errors over seeds.
        Finished runs in OUT are reused, interrupted ones resumed.
        """
        console = Console()
        try:  # cheap checks first: they answer before torch is imported
            if seeds < 1:
                raise ValueError(f"--seeds must be >= 1, got {seeds}")
            try:
                aims = [float(t) for t in targets.split(",") if t.strip()]
            except ValueError:
                raise ValueError(f"--targets {targets}: expected numbers like 1,1.5,2") from None
            if config is not None and not config.is_file():
                raise FileNotFoundError(
                    f"config file {config} not found; pass --config with a TOML file such as "
                    "configs/demo.toml"
                )
            if data is not None and data != "stdlib" and not Path(data).exists():
                raise FileNotFoundError(
                    f"corpus {data} does not exist; pass --data with a text file or folder"
                )
            from dynroute.frontier import SWEEPS
            from dynroute.frontier.benchmark import check_settings, parse_routers

            base = _base_config(config, data, steps, threads)
            points = parse_routers(routers or list(SWEEPS), aims)
            check_settings(base, points, list(range(seeds)))
        except (FileNotFoundError, ValueError) as err:
            raise error_exit(str(err)) from err
        from dynroute.frontier.benchmark import run_benchmark

        _set_threads(base.train.threads)
        console.print(
            f"Frontier: {len(points)} router settings × {seeds} seed(s) -> {out} "
            f"({base.train.steps * base.train.tokens_per_step:,} tokens per run)"
        )
        with interrupted(out):
            outcome = run_benchmark(
                base,
                points,
                list(range(seeds)),
                out,
                results or out / "frontier.json",
                title=f"compute–quality frontier, {seeds} seed(s)",
                progress=progress,
                console=console,
                command="dynroute bench frontier " + " ".join(sys.argv[3:]),
            )
        console.print(outcome.table, markup=False, soft_wrap=True)
        console.print(outcome.verdict, markup=False, soft_wrap=True)
        console.print(
            f"reused {len(outcome.reused)} finished run(s); results: {outcome.results}  "
            f"plot: {outcome.plot}  ({outcome.seconds:.0f} s)"
        )

    @bench.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        short_help="Run benchmarks/layer.py (source checkout); says what ✅/❌ compare against.",
        help="Run benchmarks/layer.py (source checkout only); extra arguments go to it "
        "(--full, --experts 8, --tokens 512, --threads 1, ...: `python benchmarks/layer.py "
        "--help`). " + LAYER_LEGEND,
    )
    def layer(ctx: typer.Context) -> None:
        script = layer_script()
        if script is None:
            raise error_exit(
                "dynroute bench layer runs benchmarks/layer.py, which ships with the source "
                f"checkout only (not found under {REPO_ROOT} or {Path.cwd()}); clone the "
                "repository and run it from there"
            )
        console = Console()
        console.print(LAYER_LEGEND, markup=False, soft_wrap=True)
        code = subprocess.call([sys.executable, str(script), *ctx.args])
        console.print(LAYER_LEGEND, markup=False, soft_wrap=True)
        raise typer.Exit(code)


def _base_config(config: Path | None, data: str | None, steps: int | None, threads: int | None):  # type: ignore[no-untyped-def]
    from dynroute.commands.demo import find_config
    from dynroute.train import apply_overrides, load_config

    if data is not None and Path(data).exists():
        data = str(Path(data).resolve())
    return apply_overrides(
        load_config(find_config(config)), data=data, steps=steps, threads=threads
    )


def _set_threads(threads: int | None) -> None:
    if threads:  # commands set threads; the library never does
        import torch

        torch.set_num_threads(threads)
