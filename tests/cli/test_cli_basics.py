"""The console script works after install."""

from typer.testing import CliRunner

from dynroute.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output and "bench" in result.output


def test_demo_prints_a_table():
    result = runner.invoke(app, ["demo", "--tokens", "64", "--experts", "8"])
    assert result.exit_code == 0, result.output
    assert "top_p" in result.output and "mean experts" in result.output


def test_bench_layer_small_shape():
    result = runner.invoke(
        app,
        [
            "bench",
            "layer",
            "--tokens",
            "8",
            "--d-model",
            "32",
            "--d-ff",
            "64",
            "--experts",
            "4",
            "--repeats",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "grouped" in result.output and "bound" in result.output
