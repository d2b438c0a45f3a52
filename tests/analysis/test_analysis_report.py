"""Report and figures are built from stats.json alone; comparisons share the code."""

import base64
import json
import re

import pytest
import torch

from analysis.helpers_analysis import TinyLM
from dynroute.analysis import (
    analyze_model,
    compare_report,
    load_runs,
    load_stats,
    render_dir,
    render_report,
    summary_rows,
    write_stats,
)
from dynroute.analysis.plots import FIGURES
from dynroute.common.html import CSS


@pytest.fixture(scope="module")
def two_runs():
    torch.manual_seed(0)
    tokens = torch.randint(0, 32, (1 + 4 * 32,))
    kw = {"seq_len": 32, "batch_size": 4, "progress": False}
    a = analyze_model(TinyLM(), tokens, meta={"name": "top2"}, **kw)
    b = analyze_model(TinyLM(router="top_p", p=0.5), tokens, meta={"name": "topp"}, **kw)
    return a, b


def _no_nan(text: str) -> None:
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in stats.json"))


def test_stats_json_round_trips_and_is_strict_json(two_runs, tmp_path):
    a, _ = two_runs
    path = write_stats(a, tmp_path)
    _no_nan(path.read_text())  # top-k: Spearman of a constant is undefined -> null, not NaN
    assert load_stats(tmp_path) == a
    assert a["difficulty_spearman"] is None
    with pytest.raises(FileNotFoundError, match="dynroute analyze"):
        load_stats(tmp_path / "missing")


def test_report_is_self_contained(two_runs, tmp_path):
    a, _ = two_runs
    # Re-render from the JSON on disk, never from in-memory objects.
    write_stats(a, tmp_path)
    report = render_dir(tmp_path)
    page = report.read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    for name in FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman(experts, token loss)" in page and "top2" in page
    assert "Top tokens per expert" in page
    assert CSS in page  # the one stylesheet of dynroute.common.html
    # the embedded figure is the file written next to the page, byte for byte
    png = (tmp_path / "figures" / "load.png").read_bytes()
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page


def test_compare_report_from_two_analysis_folders(two_runs, tmp_path):
    a, b = two_runs
    write_stats(a, tmp_path / "a")
    write_stats(b, tmp_path / "b")
    report = compare_report(tmp_path / "a", tmp_path / "b", tmp_path / "cmp", labels=("k", "p"))
    page = report.read_text()
    assert "Routing analysis: k vs p" in page
    assert page.count("data:image/png;base64,") == len(FIGURES)
    runs = load_runs(tmp_path / "cmp")
    assert list(runs) == ["k", "p"] and runs["p"] == b  # what --render re-renders from


def test_summary_rows_compare_runs_at_one_cache_size(two_runs):
    a, b = two_runs
    rows = summary_rows({"a": a, "b": b})
    assert all(len(r) == 3 for r in rows)
    cache_rows = [r for r in rows if r[0].startswith("cache hit rate")]
    assert len(cache_rows) == len(a["cache_hit_rate"])
    assert all(", C=" in r[0] for r in cache_rows)
    by_name = {r[0]: r for r in rows}
    assert by_name["experts / token"][1] == "2.000"


def test_render_report_needs_runs(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        render_report({}, tmp_path)


def test_findings_put_the_numbers_in_words(two_runs, tmp_path):
    from dynroute.analysis import findings

    a, _ = two_runs
    lines = findings(a)
    assert lines[0] == "Experts per token by layer: every layer uses 2.00 experts per token."
    assert "cannot matter" in lines[1]  # fixed top-k: no Spearman
    drops = dict(a)
    drops["position_drop_rate"] = [0.0] * 4 + [0.5] * 4
    drops["difficulty_spearman"] = -0.6
    lines = findings(drops)
    assert "fewer experts, a strong effect" in lines[1]
    drops["difficulty_spearman"] = 0.05
    assert findings(drops)[1].startswith("No meaningful link")
    assert lines[-1].endswith(
        "0.0% of assignments are dropped in the first quarter of a sequence and 50.0% in the last."
    )


def test_figures_cope_with_missing_losses_and_short_sequences():
    import warnings

    from dynroute.analysis import RecorderConfig, RoutingRecorder, summarize
    from dynroute.routing import top_p

    rec = RoutingRecorder(RecorderConfig(segment_lengths=(64,)))  # longer than T = 8
    rec.begin_batch(torch.randint(0, 50, (2, 8)))
    rec.record(0, top_p(torch.randn(16, 4), p=0.5))
    rec.end_batch(None)  # no loss known
    s = summarize(rec)
    assert s["difficulty_spearman"] is None and s["mean_loss"] is None
    assert s["cache_hit_rate"] == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, plot in FIGURES.values():
            plot({"x": s})
    assert [r[0] for r in summary_rows({"x": s})][-1] == "capacity drop rate"
