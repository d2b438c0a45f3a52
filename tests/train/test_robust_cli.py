"""Issue 18 through the real CLI: bad input, damaged files and Ctrl-C give one clear line.

Every case runs ``dynroute`` in a subprocess and checks: a non-zero exit, no traceback,
the file or flag named in the message, and nothing left behind that blocks the
corrected command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynroute.train.checkpoint import load_checkpoint
from train.robust_helpers import assert_clean_error, cli, write_config, write_texts


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust_cli")
    write_texts(root / "texts")
    write_config(root / "tiny.toml", root / "texts")
    return root


@pytest.fixture(scope="module")
def trained(work: Path) -> Path:
    """A run of 8 steps stopped after 4 (checkpoint.pt and model/ from step 4)."""
    from dynroute.train import load_config, train

    mp = pytest.MonkeyPatch()
    mp.setenv("DYNROUTE_CACHE", str(work / "c"))
    try:
        train(load_config(work / "tiny.toml"), work / "run", progress=False, stop_after=4)
    finally:
        mp.undo()
    return work / "run"


#: In-process in the fast suite, in a real subprocess with -m slow.
MODES = [
    pytest.param(True, id="in-process"),
    pytest.param(False, id="subprocess", marks=pytest.mark.slow),
]

BAD_INPUTS = [
    (["--data", "/nonexistent/texts"], "/nonexistent/texts"),
    (["--router", "top_p:p=1.5"], "p must be in (0, 1], got 1.5"),
    (["--threads", "-3"], "--threads must be an integer >= 0, got -3"),
    (["--router", "top_q"], "unknown router 'top_q'"),
    (["--router", "top_k:k=9"], "k must be in [1, 4], got 9"),
    (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--data", "{work}/empty.txt"], "empty.txt is empty"),
    (["--data", "{work}/blob.bin"], "blob.bin is binary"),
]


def _bad_files(work: Path) -> None:
    (work / "empty.txt").write_text("")
    (work / "blob.bin").write_bytes(bytes(range(256)) * 8)


@pytest.mark.parametrize(("flags", "needle"), BAD_INPUTS)
def test_bad_input_fails_first_and_writes_nothing(
    work: Path, flags: list[str], needle: str
) -> None:
    """Each bad value: one line naming it, exit 2, no --out folder, in well under a second."""
    _bad_files(work)
    out = work / f"bad_{BAD_INPUTS.index((flags, needle))}"
    args = ["train", "--config", work / "tiny.toml", "--out", out, "--no-progress"]
    cli("--help", cache=work / "c", in_process=True)  # imports paid before the clock starts
    start = time.perf_counter()
    done = cli(*args, *[a.format(work=work) for a in flags], cache=work / "c", in_process=True)
    seconds = time.perf_counter() - start
    assert_clean_error(done, needle.format(work=work))
    assert done.returncode == 2
    assert not out.exists(), f"{out} was written by a failed start"
    assert seconds < 5.0, f"{seconds:.1f} s to reject a bad value"  # < 1 s on an idle core


@pytest.mark.parametrize(
    "cases", [BAD_INPUTS[:2], pytest.param(BAD_INPUTS, marks=pytest.mark.slow)]
)
def test_bad_input_in_real_processes(work: Path, cases: list[tuple[list[str], str]]) -> None:
    """The same through real processes (all started at once: they only import and check)."""
    _bad_files(work)
    procs = []
    for i, (flags, _) in enumerate(cases):
        out = work / f"bad_process{i}"
        args = [a.format(work=work) for a in flags]
        cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(work / "tiny.toml")]
        env = {**os.environ, "DYNROUTE_CACHE": str(work / "c"), "COLUMNS": "200"}
        proc = subprocess.Popen(
            [*cmd, "--out", str(out), "--no-progress", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((out, proc))
    for (out, proc), (_, needle) in zip(procs, cases, strict=True):
        stdout, stderr = proc.communicate(timeout=600)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_clean_error(done, needle.format(work=work))
        assert not out.exists(), f"{out} was written by a failed start"


def test_failed_start_does_not_block_the_corrected_command(work: Path) -> None:
    """A folder with run.json but no checkpoint (an older failed start) is not protected."""
    out = work / "retry"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"model": {"p": 1.5}, "data": {}, "train": {}}))
    args = ("train", "--config", work / "tiny.toml", "--out", out, "--steps", "2")
    done = cli(*args, "--no-progress", cache=work / "c", in_process=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "run.json").read_text())["train"]["steps"] == 2


def test_unknown_config_key_lists_the_accepted_ones(work: Path) -> None:
    bad = work / "bad.toml"
    bad.write_text((work / "tiny.toml").read_text().replace("threads = 1", "thread = 1"))
    done = cli(
        "train", "--config", bad, "--out", work / "badkey", cache=work / "c", in_process=True
    )
    assert_clean_error(done, "bad.toml [train]: unknown key(s) ['thread']", "accepted:", "threads")


@pytest.mark.parametrize("in_process", MODES)
def test_damaged_checkpoint_names_the_file_and_the_intact_export(
    trained: Path, work: Path, in_process: bool
) -> None:
    """Truncated and random-byte checkpoint.pt: one line, then --restart-from-model works."""
    for name, damage in (
        ("truncated", lambda raw: raw[: len(raw) // 2]),
        ("random", lambda raw: os.urandom(len(raw))),
    ):
        run = work / f"ckpt_{name}_{in_process}"
        shutil.copytree(trained, run)
        raw = (run / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(damage(raw))
        args = ["train", "--config", work / "tiny.toml", "--out", run, "--no-progress"]
        done = cli(*args, cache=work / "c", in_process=in_process)
        assert_clean_error(
            done,
            f"{run / 'checkpoint.pt'} is corrupt",
            f"{run / 'model'} from step 4 is intact",
            "--restart-from-model",
        )
    # The corrected command continues from model/ (the random-byte case).
    done = cli(*args, "--restart-from-model", cache=work / "c", in_process=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("resuming from step 4")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 8


@pytest.mark.parametrize("in_process", MODES)
def test_damaged_exports_and_run_json(trained: Path, work: Path, in_process: bool) -> None:
    """Truncated model.safetensors, broken config.json and run.json: the file is named."""
    kw = {"cache": work / "c", "in_process": in_process}
    run = work / f"broken_weights_{in_process}"
    shutil.copytree(trained, run)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_clean_error(cli("eval", run, **kw), str(weights), "cannot be read")
    assert_clean_error(cli("eval", run / "model", **kw), str(weights), "dynroute train")

    run = work / f"broken_config_{in_process}"
    shutil.copytree(trained, run)
    (run / "model" / "config.json").write_text('{"model_type": "dynmoe", ')
    done = cli("eval", run / "model", **kw)
    assert_clean_error(done, f"{run / 'model' / 'config.json'} is corrupt")

    run = work / f"broken_run_json_{in_process}"
    shutil.copytree(trained, run)
    (run / "run.json").write_bytes(b"\x00\x01garbage")
    done = cli("train", "--config", work / "tiny.toml", "--out", run, **kw)
    assert_clean_error(done, f"{run / 'run.json'} is corrupt", "delete it")


def test_ctrl_c_checkpoints_and_says_how_to_resume(work: Path) -> None:
    run = work / "sigint"
    config = write_config(work / "long.toml", work / "texts", steps=100_000)
    env = {**os.environ, "DYNROUTE_CACHE": str(work / "c"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(config)]
    cmd += ["--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():  # training is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    text = " ".join((stdout + stderr).decode().split())
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert f"interrupted at step {step}; rerun the same command to resume" in text
    assert json.loads((run / "model" / "dynroute_run.json").read_text())["step"] == step
