"""One-call recipes: analyse a checkpoint, re-render a report, compare two runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynroute.analysis.report import render_report
from dynroute.analysis.run import STATS_FILE, analyze_checkpoint, load_stats

__all__ = ["analyze", "compare_report", "load_runs", "render_dir"]


def _label(stats: dict[str, Any], fallback: str) -> str:
    return str(stats.get("meta", {}).get("name") or fallback)


def analyze(checkpoint: str | Path, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Analyse a checkpoint: ``out_dir/stats.json``, ``figures/*.png`` and ``report.html``.

    Keyword arguments go to :func:`dynroute.analysis.analyze_checkpoint`.

    Example:
        >>> stats = analyze("runs/top_p", "analysis/top_p")  # doctest: +SKIP
    """
    stats = analyze_checkpoint(checkpoint, out_dir, **kwargs)
    render_report({_label(stats, Path(checkpoint).name): stats}, out_dir)
    return stats


def load_runs(analysis_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Label -> stats of an analysis folder (one run, or the two of a comparison folder).

    Example:
        >>> load_runs("analysis/compare").keys()  # doctest: +SKIP
        dict_keys(['top_k', 'top_p'])
    """
    folder = Path(analysis_dir)
    stats = load_stats(folder)
    if "runs" in stats:  # a comparison folder: stats.json maps label -> run folder
        return {label: load_stats(folder / sub) for label, sub in stats["runs"].items()}
    return {_label(stats, folder.name): stats}


def render_dir(analysis_dir: str | Path) -> Path:
    """Re-render ``report.html`` (and figures) of an analysis folder from its stats.json.

    Example:
        >>> render_dir("analysis/top_p")  # doctest: +SKIP
        PosixPath('analysis/top_p/report.html')
    """
    return render_report(load_runs(analysis_dir), analysis_dir)


def compare_report(
    run_a: str | Path,
    run_b: str | Path,
    out_dir: str | Path,
    labels: tuple[str, str] | None = None,
    **kwargs: Any,
) -> Path:
    """Two runs side by side in ``out_dir/report.html``.

    Each of ``run_a`` / ``run_b`` is either an analysis folder (has ``stats.json``: used
    as is) or a checkpoint / training run folder (analysed into ``out_dir/<label>/``
    first, with ``kwargs`` passed to :func:`dynroute.analysis.analyze_checkpoint`; only
    its ``stats.json`` is written there).
    ``out_dir/stats.json`` records which folders were compared, so
    ``dynroute analyze --render out_dir`` re-renders the comparison.

    Returns:
        Path: the report.

    Example:
        >>> compare_report("runs/top_k", "runs/top_p", "analysis/compare")  # doctest: +SKIP
        PosixPath('analysis/compare/report.html')
    """
    from dynroute.analysis.run import write_stats

    out = Path(out_dir)
    names = list(labels) if labels else [Path(run_a).name or "A", Path(run_b).name or "B"]
    if names[0] == names[1]:
        names = [f"{names[0]} (A)", f"{names[1]} (B)"]
    runs: dict[str, dict[str, Any]] = {}
    subdirs: dict[str, str] = {}
    for name, run in zip(names, (run_a, run_b), strict=True):
        src = Path(run)
        if (src / STATS_FILE).is_file() and not (src / "config.json").is_file():
            runs[name] = load_stats(src)
            subdirs[name] = str(src.resolve())
        else:
            # Only stats.json here: the comparison shows everything of both runs, and
            # `dynroute analyze --render out_dir/<label>` makes a single-run report.
            runs[name] = analyze_checkpoint(src, out / _safe(name), **kwargs)
            subdirs[name] = _safe(name)
    write_stats({"runs": subdirs}, out)
    return render_report(runs, out)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
