"""Every folder a dynroute command writes, given to every command that takes a folder:
it works, or it is refused in one line (exit 2, no traceback) that names the folder.

The folders are made by the real commands (one of each :data:`FOLDER_KINDS` kind, plus a
missing path, an empty folder, a folder of several runs and a transformers checkpoint);
the commands are found by walking the CLI (every command with a positional argument), so
a new command that takes a folder, or a new kind of folder, fails here until it is added.
Runs in this process through typer's runner (one torch import for ~100 invocations); the
subprocess form of the same error path is ``test_errors.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dynroute.cli import app
from dynroute.common.folders import FOLDER_KINDS, folder_kind
from hf.tiny_models import build_tiny, char_tokenizer
from tiny_runs import tiny_run

from .test_cli_basics import COMMANDS

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

#: What each command is called with after its folder (outputs go under OUT).
ARGS: dict[str, list[str]] = {
    "eval": ["--max-batches", "1", "--no-progress"],
    "analyze": ["--out", "OUT/analysis", "--max-tokens", "128", "--seq-len", "32", "--no-progress"],
    "patch": ["--router", "top_p:p=0.4", "--out", "OUT/patched", "--max-tokens", "64"],
    "posthoc": [
        "--targets", "0.75", "--methods", "top_k,top_p_norm", "--eval-windows", "2",
        "--calib-tokens", "64", "--no-progress",
    ],
    "serve": ["--port", "1"],
    "lora train": [
        "--config", str(REPO / "configs" / "lora_tiny.toml"), "--out", "OUT/lora",
        "--steps", "1", "--no-progress",
    ],
    "lora library build": [
        "--config", str(REPO / "configs" / "lora_tiny.toml"), "--out", "OUT/library",
        "--domains", "docs,licenses", "--held-out", "licenses", "--steps", "1",
        "--gate-steps", "1", "--no-mole", "--no-progress",
    ],
    "lora library eval": ["--top-k", "1", "--max-batches", "1", "--no-progress"],
    "adaptive oracle": ["--windows", "2", "--no-progress"],
    "adaptive report": ["--out", "OUT/report", "--windows", "2", "--no-progress"],
    "llm route": ["what is 2 + 2?"],
    "llm serve": ["--backend", "nobody=http://127.0.0.1:1", "--port", "1"],
    "llm update": [
        "--log", str(REPO / "tests" / "llm" / "feedback_log.jsonl"), "--out", "OUT/updated",
    ],
    "llm add-model": [
        "--table", "llmrouter", "--model", "qwen2.5-7b-instruct", "--labels", "20",
        "--out", "OUT/added", "--no-progress",
    ],
}  # fmt: skip

#: The folders each command works on (every other one: refused in one line). Servers are
#: only run where they refuse (the accepted cases would serve; tests/serve starts them).
ACCEPTS: dict[str, set[str]] = {
    "eval": {"training run", "model folder", "adaptive run", "transformers checkpoint"},
    "analyze": {"training run", "model folder", "transformers checkpoint"},
    "patch": {"transformers checkpoint"},
    "posthoc": {"training run", "model folder", "transformers checkpoint"},
    "serve": {"training run", "model folder", "adaptive run", "transformers checkpoint"},
    "lora train": {"training run", "model folder", "adaptive run"},
    "lora library build": {"training run", "model folder", "adaptive run"},
    "lora library eval": {"adapter library"},
    "adaptive oracle": {"adaptive run"},
    "adaptive report": {"adaptive run"},
    "llm route": {"fitted query router"},
    "llm serve": {"fitted query router"},
    "llm update": {"fitted query router"},
    "llm add-model": {"fitted query router"},
}
SERVERS = {"serve", "llm serve"}


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def _ok(result: Result, what: str) -> None:
    assert result.exit_code == 0, (what, result.output[-2000:], result.exception)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder of each kind, written by the command that writes it."""
    root = tmp_path_factory.mktemp("kinds")
    made: dict[str, Path] = {"missing": root / "nope", "empty folder": root / "empty"}
    made["empty folder"].mkdir()
    config = tiny_run(root, train={"steps": 2, "seq_len": 64})
    run = made["training run"] = root / "runs" / "tiny"
    _ok(invoke("train", "--config", config, "--out", run, "--no-progress"), "train")
    made["model folder"] = run / "model"
    made["adaptive run"] = root / "runs" / "adaptive"
    adaptive = REPO / "configs" / "adaptive_tiny.toml"
    _ok(
        invoke("adaptive", "train", "--config", adaptive, "--out", made["adaptive run"],
               "--steps", "1", "--no-progress"),
        "adaptive train",
    )  # fmt: skip
    made["several runs"] = root / "runs"
    lora = made["LoRA-experts run"] = root / "lora"
    _ok(invoke("lora", "train", run, *ARGS["lora train"][:2], "--out", lora, "--steps", "1"), "l")
    library = made["adapter library"] = root / "library"
    build = [a.replace("OUT/library", str(library)) for a in ARGS["lora library build"]]
    _ok(invoke("lora", "library", "build", run, *build), "lora library build")
    made["comparison of trained routers"] = root / "demo"
    demo = ["demo", "--fast", "--no-analysis", "--steps", "2", "--no-progress"]
    _ok(invoke(*demo, "--out", made["comparison of trained routers"]), "demo")
    made["routing-analysis report"] = root / "analysis"
    analysis = ["--out", made["routing-analysis report"], "--max-tokens", "128", "--no-progress"]
    _ok(invoke("analyze", run, *analysis), "analyze")
    made["adaptive-computation report"] = root / "adaptive_report"
    report = ["--out", made["adaptive-computation report"], "--windows", "2", "--no-progress"]
    _ok(invoke("adaptive", "report", made["adaptive run"], *report), "adaptive report")
    made["fitted query router"] = root / "router"
    _ok(invoke("llm", "fit", "--data", "routellm-gsm8k", "--out", root / "router"), "llm fit")
    made["query-routing report"] = root / "llm_report"
    llm_report = ["--data", "routellm-gsm8k", "--query-router", "knn", "--no-progress"]
    _ok(invoke("llm", "report", *llm_report, "--out", root / "llm_report"), "llm report")
    hf = made["transformers checkpoint"] = root / "olmoe"
    build_tiny("olmoe").save_pretrained(hf)
    char_tokenizer().save_pretrained(hf)
    return made


def kind_of(name: str) -> str:
    """The test's name for a folder kind: FolderKind.name without its article."""
    return name.split(" ", 1)[1]


def test_every_folder_kind_has_a_sample(folders: dict[str, Path]) -> None:
    """A new FolderKind needs a folder here, made by its command (and is told apart)."""
    for kind in FOLDER_KINDS:
        if kind.name != "a model folder":  # a training run's model/ is one, as is olmoe/
            assert folder_kind(folders[kind_of(kind.name)]) is kind, kind.name
    assert folder_kind(folders["model folder"]) is folder_kind(folders["transformers checkpoint"])


def test_every_command_that_takes_a_folder_is_here() -> None:
    takes = {name for name, cmd in COMMANDS.items() if any(
        p.param_type_name == "argument" for p in cmd.params
    )}  # fmt: skip
    assert takes == set(ARGS) == set(ACCEPTS)


CASES = [
    (command, kind)
    for command in sorted(ARGS)
    for kind in (
        "training run",
        "model folder",
        "adaptive run",
        "LoRA-experts run",
        "adapter library",
        "comparison of trained routers",
        "routing-analysis report",
        "adaptive-computation report",
        "fitted query router",
        "query-routing report",
        "transformers checkpoint",
        "several runs",
        "empty folder",
        "missing",
    )
    if not (command in SERVERS and kind in ACCEPTS[command])
]


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_works_or_one_line(
    folders: dict[str, Path], tmp_path: Path, command: str, kind: str
) -> None:
    folder = folders[kind]
    args = [a.replace("OUT", str(tmp_path)) for a in ARGS[command]]
    result = invoke(*command.split(), folder, *args)
    if kind in ACCEPTS[command]:
        _ok(result, f"{command} {kind}")
        return
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        command, kind, result.output[-3000:], result.exception,
    )  # fmt: skip
    assert result.exit_code == 2, (command, kind, result.output[-2000:])
    line = " ".join(result.stderr.split())  # one line, however the runner wrapped it
    assert line.startswith("error: ") and "Traceback" not in result.output, line
    assert str(folder) in line, (command, kind, line)
    assert f"--out {folder}" not in line, line  # never "write into the folder you gave"
    known = folder_kind(folder)
    if known is not None and not known.model:  # says what the folder is
        assert known.name in line, (command, kind, line)
    shutil.rmtree(tmp_path, ignore_errors=True)
