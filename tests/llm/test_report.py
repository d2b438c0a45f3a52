"""The llm report: a plot where every curve shows and the legend hides nothing; one page."""

import base64
import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dynroute.llm import evaluate
from dynroute.llm.data import OutcomeTable
from dynroute.llm.report import (
    FIGURES_DIR,
    REFERENCE,
    REFERENCE_COLOR,
    cost_quality_figure,
    write_report,
)


def table(n, seed):
    """Five models; the dearest is best on most queries, cheap ones on their own kind."""
    queries, quality, cost = [], [], []
    for i in range(n):
        kind = (i * 7 + seed) % 4
        queries.append(f"question {i} of kind {kind} " + "word " * (i % 5))
        quality.append([float(kind == 0), float(kind == 1), float(kind == 2), 0.2, 0.9])
        cost.append([1.0, 1.2, 1.5, 0.9, 10.0])
    models = ["alpha-7b", "beta-8b", "gamma-9b", "delta-tiny", "omega-70b-instruct"]
    return OutcomeTable.from_rows(queries, models, quality, cost)


@pytest.fixture(scope="module")
def result():
    specs = ["best_single", {"name": "knn", "k": 3}, "random", "oracle"]
    return evaluate(specs, table(40, 0), table(20, 1))


def test_every_curve_shows_and_the_legend_hides_nothing(result):
    fig = cost_quality_figure(result)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    # Outside the plot: no curve, point or model name under it.
    assert not box.overlaps(ax.get_window_extent(renderer))
    for text in ax.texts:
        assert not box.overlaps(text.get_window_extent(renderer)), text.get_text()
    labels = [t.get_text() for t in legend.get_texts()]
    for r in result["routers"]:  # every router (the oracle as its star) in the legend
        assert any(label.startswith(f"{r['router']} (AIQ") for label in labels)
    # random: dashed, its own colour, above every other line, and a line (its hull alone
    # is often one point under the cheapest model): flat out to the dearest model's cost.
    random = [ln for ln in ax.lines if ln.get_color() == REFERENCE_COLOR]
    others = [ln for ln in ax.lines if ln.get_color() != REFERENCE_COLOR]
    assert random and all(ln.get_linestyle() == "--" for ln in random)
    assert min(ln.get_zorder() for ln in random) > max(ln.get_zorder() for ln in others)
    xs = [x for ln in random for x in ln.get_xdata()]
    assert max(xs) == pytest.approx(1.0) and max(xs) - min(xs) > 0.1
    assert any(ln.get_label().startswith(f"{REFERENCE} (AIQ") for ln in random)


def test_the_plot_is_inside_the_page(result, tmp_path):
    page = write_report(result, tmp_path)
    html = page.read_text()
    png = (tmp_path / FIGURES_DIR / "cost_quality.png").read_bytes()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert [base64.b64decode(e) for e in embedded] == [png]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FIGURES_DIR, "report.html"]
