"""Expert parallelism on 2 real processes (gloo over 127.0.0.1) against the one-process MoE."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dynroute.parallel import launch, launch_command
from dynroute.parallel.selftest import CASES

sys.path.insert(0, str(Path(__file__).parent))  # so spawned ranks can import ep_workers
import ep_workers

TOL = 1e-5
KEYS = ("output", "aux", "x_grad", "gate_grad", "expert_grad")


@pytest.fixture(scope="module")
def launched(two_rank_checks) -> list[dict]:
    return two_rank_checks


@pytest.fixture(scope="module")
def equivalence(launched) -> list[dict]:
    return [res["equivalence"] for res in launched]


@pytest.mark.parametrize("split", list(ep_workers.TOKEN_SPLITS))
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_gradients_match_single_process(equivalence, case, split):
    for rank, res in enumerate(equivalence):
        r = res[f"{case}/{split}"]
        assert r["rank"] == rank
        for key in KEYS:
            assert r[key] <= TOL, (case, split, rank, key, r[key])
        if r["concat_output"] is not None:  # token-choice: same as MoE on all tokens at once
            assert r["concat_output"] <= TOL


def test_zero_token_cases_really_happened(equivalence):
    r0, r1 = (res["skewed/uneven"] for res in equivalence)
    assert sum(r1["received"]) == 0 and sum(r0["received"]) == 14  # rank 1's experts idle
    assert r1["expert_grad_norm"] == 0.0 and r0["expert_grad_norm"] > 0
    tiny = [res["top_k/tiny_rank"]["received"] for res in equivalence]
    assert any(c == 0 for counts in tiny for c in counts), tiny  # some expert got no rows
    empty = equivalence[1]["top_p/empty_rank"]
    assert empty["tokens"] == 0 and sum(equivalence[0]["top_p/empty_rank"]["received"]) > 0


def test_dynamic_routing_changes_the_per_rank_load(equivalence):
    k = [res["top_k/uneven"]["mean_experts"] for res in equivalence]
    p = [res["top_p/uneven"]["mean_experts"] for res in equivalence]
    assert k == [2.0, 2.0] and all(1.0 <= v <= 4.0 for v in p)


def test_ddp_on_replicated_parameters(equivalence):
    for res in equivalence:
        ddp = res["ddp"]
        assert ddp["grads"] <= TOL, ddp  # DDP-averaged router + averaged expert grads
        assert ddp["state"] == 0.0 and ddp["shard_kept"] == 0.0, ddp
        assert ddp["clip_active"] and ddp["norm"] <= TOL and ddp["clipped_grads"] <= TOL, ddp


def test_language_model_trains_and_resumes_the_same_sharded_with_ddp(launched):
    for res in launched:
        lm = res["train_lm"]
        assert lm["loss"] <= TOL and lm["weights"] <= TOL, lm  # same losses, same weights
        assert lm["optimizer"] <= TOL and lm["mean_loss"] <= TOL, lm  # gathered momentum
        assert lm["moved"] > 1e-3  # and training did change them
        assert lm["ranks"] == [0, 1]
    assert launched[0]["train_lm"]["keys"] == launched[1]["train_lm"]["keys"]


def test_bad_setups_fail_clearly_and_in_bounded_time(launched):
    results = [res["bad_setups"] for res in launched]
    for res in results:
        assert res["indivisible"].startswith("ValueError") and "evenly" in res["indivisible"]
        assert "different MoE layer" in res["different_weights"]
    assert "failed on rank 0 of 2" in results[0]["missing_rank"]
    assert "every rank must run the same layers" in results[0]["missing_rank"]
    assert 0.9 <= results[0]["seconds"] < 10, results[0]  # the group timeout is 1 s


def test_ranks_agree_on_profiled_times_and_on_the_plan(launched):
    """Ranks that planned from different times could choose different chunks and mismatch
    their collectives (a crash seen in training): times are the slowest rank's, the same
    on every rank, and the plan is rank 0's."""
    first, second = (rank["agreement"] for rank in launched)
    assert first["seconds"] == second["seconds"] > 0
    assert first["plan"] == second["plan"] == {"chunks": 1}


def test_launch_runs_the_selftest_under_torchrun(capfd):
    rc = launch(2, ["--tokens", "8"], module="dynroute.parallel.selftest", timeout_s=90)
    out = capfd.readouterr().out
    assert rc == 0, out
    assert "selftest passed: world=2 backend=gloo" in out


@pytest.mark.slow
def test_launch_reports_a_bad_setup_as_a_failure(capfd):
    rc = launch(2, ["--experts", "3"], module="dynroute.parallel.selftest", timeout_s=90)
    err = capfd.readouterr().err
    assert rc != 0 and "cannot be split evenly over 2 ranks" in err


@pytest.mark.slow
def test_docs_example_runs_under_torchrun(tmp_path):
    doc = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)[0]
    script = tmp_path / "ep_train.py"
    script.write_text(code)
    cmd = launch_command(2, [str(script)], "dynroute.cli")
    at = cmd.index("dynroute.cli")
    del cmd[at - 1 : at + 1]  # run the script itself, not `-m dynroute.cli`
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2: loss" in done.stdout


@pytest.mark.slow
def test_dynroute_train_expert_parallel_once_wired(tmp_path):
    """Activates once `dynroute.train.train` takes `expert_parallel` (see docs/scaling.md)."""
    import inspect

    from dynroute.train import load_checkpoint, train

    if "expert_parallel" not in inspect.signature(train).parameters:
        pytest.skip("dynroute train --expert-parallel is not wired yet")
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--out", str(out), "--steps", "4"]
    rc = launch(
        2, [*argv, "--no-progress", "--expert-parallel", "2"], "dynroute.cli", timeout_s=300
    )
    assert rc == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4 and len(state["sampler_rngs"]) == 2
    experts = [v for k, v in state["model"].items() if k.endswith("experts.down")]
    assert experts and all(v.shape[0] == 4 for v in experts)  # gathered: all 4 experts


@pytest.mark.slow
def test_ep_schedule_auto_trains_the_same_losses_as_off(tmp_path):
    """`dynroute train --expert-parallel 2 --ep-schedule auto|off`: the schedule (chunks,
    partitioned gradient all-reduce) changes when data moves, not what is computed."""
    import json

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
    losses = {}
    for schedule in ("off", "auto"):
        out = tmp_path / schedule
        argv = ["train", "--config", str(config), "--out", str(out), "--steps", "5",
                "--router", "top_p:p=0.4", "--no-progress", "--expert-parallel", "2",
                "--ep-schedule", schedule]  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "dynroute.cli", *argv],
            capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (out / "metrics.jsonl").read_text().splitlines()
        losses[schedule] = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
        if schedule == "auto":
            assert "--ep-schedule auto: {'chunks': {" in done.stderr
    assert losses["off"] and len(losses["off"]) == len(losses["auto"])
    for off, auto in zip(losses["off"], losses["auto"], strict=True):
        assert auto == pytest.approx(off, rel=1e-4, abs=1e-5)
