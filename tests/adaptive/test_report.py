"""Difficulty numbers on a forced case; `dynroute adaptive report` on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dynroute.adaptive.difficulty import binned_means, difficulty_stats, token_difficulty
from dynroute.adaptive.oracle import OracleReport
from dynroute.cli import app
from dynroute.common.numbers import MISSING
from strict_json import load_strict


def _forced() -> OracleReport:
    # 4 tokens, budgets 0..2: per-token oracle losses chosen by hand
    oracle = np.array(
        [
            [3.0, 2.0, 1.0, 5.0],  # k = 0
            [2.0, 2.0, 1.5, 4.0],  # k = 1
            [2.5, 2.0, 2.0, 3.0],  # k = 2
        ]
    )
    rows = [
        {"budget": k, "oracle_loss": float(oracle[k].mean()), "random_mean_loss": 4.0,
         "random_best_loss": 3.5, "router_loss": None}
        for k in range(3)
    ]  # fmt: skip
    return OracleReport(
        rows=rows,
        method="exhaustive",
        beam_width=None,
        layers=2,
        skip=False,
        context="big",
        tokens=4,
        context_loss=2.0,
        oracle_big_share=[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]],
        token_ids=np.array([1, 2, 3, 1]),
        positions=np.array([0, 1, 2, 3]),
        targets=np.array([2, 3, 1, 1]),
        context_losses=np.array([1.0, 2.0, 3.0, 4.0]),
        oracle_losses=oracle,
    )


def test_difficulty_by_hand() -> None:
    report = _forced()
    drop = token_difficulty(report.oracle_losses)
    assert drop.tolist() == [1.0, 0.0, 0.0, 2.0]  # k=0 loss minus the best budget's
    s = difficulty_stats(report, token_counts=np.array([0, 10, 1, 1]), bins=2)
    assert s["mean"] == pytest.approx(0.75)
    assert s["share_zero"] == pytest.approx(0.5)
    # bins [0, 1) and [1, 2] (the last bin is closed): {0, 0} and {1, 2}
    assert s["histogram"] == [2, 2] and s["histogram_edges"] == [0.0, 1.0, 2.0]
    # ranks of drop: [3, 1.5, 1.5, 4]; raw loss ranks [1, 2, 3, 4]
    r = np.array([3, 1.5, 1.5, 4])
    expected = np.corrcoef(r, [1, 2, 3, 4])[0, 1]
    assert s["corr_raw_loss"] == pytest.approx(expected)
    assert s["corr_position"] == pytest.approx(expected)  # positions 0..3, same ranks
    # targets 2, 3, 1, 1 -> counts 1, 1, 10, 10: ranks [1.5, 1.5, 3.5, 3.5]
    expected_freq = np.corrcoef(r, [1.5, 1.5, 3.5, 3.5])[0, 1]
    assert s["corr_log_target_frequency"] == pytest.approx(expected_freq)
    assert s["mean_early_positions"] == pytest.approx(0.5)  # positions 0, 1
    assert s["mean_late_positions"] == pytest.approx(1.0)  # positions 2, 3
    assert s["binned"]["position"] == {"x": [0.5, 2.5], "y": [0.5, 1.0], "count": [2, 2]}
    json.dumps(s)  # JSON-ready


def test_binned_means_ties_stay_together() -> None:
    b = binned_means(np.array([1.0, 1.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0, 3.0]), bins=4)
    assert b["count"] == [3, 1] and b["y"] == [1.0, 3.0]


def test_token_difficulty_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="budgets, tokens"):
        token_difficulty(np.zeros(3))


def test_report_page_from_a_forced_oracle(tmp_path: Path) -> None:
    from dynroute.adaptive.report import render_adaptive_report
    from dynroute.common.html import CSS

    page = render_adaptive_report(_forced(), tmp_path).read_text()
    assert CSS in page  # the one stylesheet of dynroute.common.html
    # budget 0: oracle mean (3 + 2 + 1 + 5) / 4, random mean 4, no router
    assert '<tr><td>0</td><td class="num">2.7500</td>' in page
    assert (
        f'<td class="num">4.0000</td><td class="num">3.5000</td><td class="num">{MISSING}</td>'
        in page
    )
    assert page.count('src="data:image/png;base64,') == 4
    data = load_strict(tmp_path / "adaptive_report.json")
    assert data["difficulty"]["mean"] == pytest.approx(0.75)


@pytest.fixture(scope="module")
def router_run(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynroute.adaptive import AdaptiveConfig
    from dynroute.adaptive.training import load_adaptive_config, train_adaptive
    from dynroute.train import RunConfig

    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("report-runs")
    base = load_adaptive_config(config)
    train_adaptive(base, tmp / "random", progress=False)
    raw = base.to_dict()
    raw["model"].update(routing="router", init_from=str(tmp / "random"), train_routers_only=True)
    raw["train"].update(steps=4)
    train_adaptive(
        RunConfig.from_dict(raw, model_config=AdaptiveConfig), tmp / "router", progress=False
    )
    torch.set_num_threads(threads)
    return tmp / "router"


def test_report_command_writes_html(router_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    args = ["adaptive", "report", str(router_run), "--out", str(out), "--big-layers", "0", "1", "2"]
    result = CliRunner().invoke(app, [*args, "--windows", "4", "--random", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    page = (out / "report.html").read_text()
    for section in ("Oracle per budget", "Token difficulty", "Histogram of difficulty",
                    "Which layers the oracle runs big", "raw loss, position and token frequency",
                    "Oracle vs random patterns vs trained routers"):  # fmt: skip
        assert section in page, section
    assert page.count('src="data:image/png;base64,') == 4
    assert {p.name for p in (out / "figures").iterdir()} == {
        "curve.png", "layers.png", "hist.png", "relations.png"
    }  # fmt: skip
    data = json.loads((out / "adaptive_report.json").read_text())
    assert [r["budget"] for r in data["oracle"]["rows"]] == [0, 1, 2]
    assert sum(r["router_loss"] is not None for r in data["oracle"]["rows"]) == 1
    diff = data["difficulty"]
    assert diff["tokens"] == data["oracle"]["tokens"] and diff["mean"] >= 0
    assert sum(diff["histogram"]) == diff["tokens"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--big-layers", "0", "9"], "out of range"),
        (["--big-layers", "x"], "integers"),
        (["--context", "nope"], "--context must be one of"),
    ],
)
def test_report_bad_input_exits_2(
    router_run: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["adaptive", "report", str(router_run), "--out", str(tmp_path / "r"), *extra]
    result = CliRunner().invoke(app, [*args, "--windows", "2", "--random", "2", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_report_missing_run_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    args = ["adaptive", "report", str(missing), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "no-such-run" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
