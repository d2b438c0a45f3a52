"""The console script works after install."""

from typer.testing import CliRunner

from dynroute.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # `dynroute bench` is gone: its suite is `python benchmarks/layer.py` (see tests/bench)
    for command in ("demo", "train", "eval", "analyze", "patch"):
        assert command in result.output


def test_demo_prints_a_table():
    result = runner.invoke(app, ["demo", "--tokens", "64", "--experts", "8"])
    assert result.exit_code == 0, result.output
    assert "top_p" in result.output and "mean experts" in result.output
