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
    """A finished 8-step run (checkpoint.pt and model/ from step 8)."""
    done = cli("train", "--config", work / "tiny.toml", "--out", work / "run", cache=work / "c")
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "run"


BAD_INPUTS = [
    (["--data", "/nonexistent/texts"], "/nonexistent/texts"),
    (["--p", "1.5"], "--p must be in (0, 1], got 1.5"),
    (["--router", "top_q"], "unknown router 'top_q'"),
    (["--k", "9", "--router", "top_k"], "k must be in [1, 4], got 9"),
    (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--threads", "-3"], "--threads must be an integer >= 0, got -3"),
    (["--data", "{work}/empty.txt"], "empty.txt is empty"),
    (["--data", "{work}/blob.bin"], "blob.bin is binary"),
]


def test_bad_input_fails_first_and_writes_nothing(work: Path) -> None:
    """Each bad value: one line naming it, exit 2, and no --out folder at all."""
    (work / "empty.txt").write_text("")
    (work / "blob.bin").write_bytes(bytes(range(256)) * 8)
    # One process per case, all started at once: they only import and validate.
    procs = []
    for i, (flags, _) in enumerate(BAD_INPUTS):
        out = work / f"bad{i}"
        args = [a.format(work=work) for a in flags]
        cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(work / "tiny.toml")]
        env = {**os.environ, "DYNROUTE_CACHE": str(work / "c"), "COLUMNS": "200"}
        procs.append(
            (
                out,
                subprocess.Popen(
                    [*cmd, "--out", str(out), "--no-progress", *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    for (out, proc), (_, needle) in zip(procs, BAD_INPUTS, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_clean_error(done, needle.format(work=work))
        assert not out.exists(), f"{out} was written by a failed start"


def test_failed_start_does_not_block_the_corrected_command(work: Path) -> None:
    """A folder with run.json but no checkpoint (an older failed start) is not protected."""
    out = work / "retry"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"model": {"p": 1.5}, "data": {}, "train": {}}))
    done = cli(
        "train", "--config", work / "tiny.toml", "--out", out, "--steps", "2", cache=work / "c"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "run.json").read_text())["train"]["steps"] == 2


def test_unknown_config_key_lists_the_accepted_ones(work: Path) -> None:
    bad = work / "bad.toml"
    bad.write_text((work / "tiny.toml").read_text().replace("threads = 1", "thread = 1"))
    done = cli("train", "--config", bad, "--out", work / "badkey", cache=work / "c")
    assert_clean_error(done, "bad.toml [train]: unknown key(s) ['thread']", "accepted:", "threads")


def test_damaged_checkpoint_names_the_file_and_the_intact_export(trained: Path, work: Path) -> None:
    """Truncated and random-byte checkpoint.pt: one line, then --restart-from-model works."""
    for name, damage in (
        ("truncated", lambda raw: raw[: len(raw) // 2]),
        ("random", lambda raw: os.urandom(len(raw))),
    ):
        run = work / f"ckpt_{name}"
        shutil.copytree(trained, run)
        raw = (run / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(damage(raw))
        args = ["train", "--config", work / "tiny.toml", "--out", run, "--no-progress"]
        done = cli(*args, "--steps", "12", cache=work / "c")
        assert_clean_error(
            done,
            f"{run / 'checkpoint.pt'} is corrupt",
            f"{run / 'model'} from step 8 is intact",
            "--restart-from-model",
        )
    # The corrected command: continue from model/ (random-byte case).
    done = cli(*args, "--steps", "12", "--restart-from-model", cache=work / "c")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.startswith("resuming from step 8")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 12


def test_damaged_exports_and_run_json(trained: Path, work: Path) -> None:
    """Truncated model.safetensors, broken config.json and run.json: the file is named."""
    run = work / "broken_weights"
    shutil.copytree(trained, run)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_clean_error(cli("eval", run, cache=work / "c"), str(weights), "cannot be read")
    assert_clean_error(cli("eval", run / "model", cache=work / "c"), str(weights), "dynroute train")

    run = work / "broken_config"
    shutil.copytree(trained, run)
    (run / "model" / "config.json").write_text('{"model_type": "dynmoe", ')
    done = cli("eval", run / "model", cache=work / "c")
    assert_clean_error(done, f"{run / 'model' / 'config.json'} is corrupt")

    run = work / "broken_run_json"
    shutil.copytree(trained, run)
    (run / "run.json").write_bytes(b"\x00\x01garbage")
    done = cli("train", "--config", work / "tiny.toml", "--out", run, cache=work / "c")
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
