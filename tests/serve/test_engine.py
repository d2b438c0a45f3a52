"""GenerationEngine in-process: per-row limits inside one batch, grouping, cancellation."""

from __future__ import annotations

import threading

import pytest

from dynroute.serve.engine import GenerationEngine, Job
from dynroute.serve.loading import load_served_model


@pytest.fixture(scope="module")
def served(tiny_models):
    return load_served_model(tiny_models["small"], "small")


def run_together(served, jobs, pad=False):
    """Submit all jobs while the worker is held, so they meet in the queue."""
    gate = threading.Event()
    with GenerationEngine(served.model, served.tokenizer, pad_batching=pad) as engine:
        blocker = Job(served.encode("x"), max_tokens=1, on_text=lambda _: gate.wait(30))
        engine.submit(blocker)
        futures = [engine.submit(j) for j in jobs]
        gate.set()
        results = [f.result(timeout=120) for f in futures]
        return results, dict(engine.stats)


def test_rows_of_one_batch_stop_on_their_own(served):
    ids = served.encode("def f(x):")
    pieces: list[str] = []
    jobs = [
        Job(ids, max_tokens=2),
        Job(ids, max_tokens=7, on_text=pieces.append),
        Job(ids, max_tokens=4),
    ]
    (a, b, c), stats = run_together(served, jobs)
    assert stats["largest_batch"] == 3  # one generate call for the three
    for result, wanted in zip((a, b, c), (2, 7, 4), strict=True):
        assert result.completion_tokens == wanted or (
            result.finish_reason == "stop" and result.completion_tokens < wanted
        )
    assert b.text.startswith(a.text) and b.text.startswith(c.text)  # greedy, same prompt
    assert "".join(pieces) == b.text


def test_prompt_lengths_and_sampling_settings_are_not_mixed(served):
    # pad_batching=False (an adaptive model, say): only equal lengths share a batch
    short, long = served.encode("def"), served.encode("def f(x): return")
    jobs = [Job(short, 3), Job(long, 3), Job(short, 3, temperature=0.7), Job(short, 3)]
    results, stats = run_together(served, jobs)
    assert stats["requests"] == 5 and stats["generate_calls"] == 4  # blocker + 3 groups
    assert results[0].text == results[3].text


def test_a_cancelled_job_is_skipped(served):
    job = Job(served.encode("def"), 3)
    job.cancelled.set()
    with GenerationEngine(served.model, served.tokenizer, pad_batching=False) as engine:
        future = engine.submit(job)
        engine.submit(Job(served.encode("def"), 1)).result(timeout=60)
    assert future.cancelled()


def test_a_transformers_checkpoint_is_left_padded_and_unchanged(tmp_path):
    """Prompts of different lengths share one batch on a model that honours the mask,
    and each answers as it does alone."""
    from hf.tiny_models import build_tiny, char_tokenizer

    build_tiny("olmoe").save_pretrained(tmp_path / "olmoe")
    char_tokenizer().save_pretrained(tmp_path / "olmoe")
    olmoe = load_served_model(tmp_path / "olmoe")
    assert olmoe.pad_batching and olmoe.name == "olmoe"
    prompts = [olmoe.encode(t) for t in ("def add(a, b):", "x = 1", "return")]
    assert len({len(p) for p in prompts}) == 3
    with GenerationEngine(olmoe.model, olmoe.tokenizer, pad_batching=True) as engine:
        alone = [engine.submit(Job(p, 5)).result(timeout=120).text for p in prompts]
    together, stats = run_together(olmoe, [Job(p, 5) for p in prompts], pad=True)
    assert stats["largest_batch"] >= 3  # the three (the held job may have joined them)
    assert [r.text for r in together] == alone


def test_a_dynroute_model_is_left_padded_and_unchanged(served):
    """DynMoE models honour attention_mask (KV cache with left padding): prompts of
    different lengths share a batch and each answers as it does alone."""
    assert served.pad_batching
    prompts = [served.encode(t) for t in ("def add(a, b):", "x = 1", "return")]
    assert len({len(p) for p in prompts}) == 3
    with GenerationEngine(served.model, served.tokenizer, pad_batching=True) as engine:
        alone = [engine.submit(Job(p, 5)).result(timeout=120).text for p in prompts]
    together, stats = run_together(served, [Job(p, 5) for p in prompts], pad=True)
    assert stats["largest_batch"] >= 3
    assert [r.text for r in together] == alone


def test_graph_of_tokens_models_are_not_padded():
    """A router that mixes a sequence's tokens would see the padding: no left padding."""
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM

    def model(router: str) -> DynMoEForCausalLM:
        return DynMoEForCausalLM(
            DynMoEConfig(
                vocab_size=40,
                d_model=16,
                n_layers=1,
                n_heads=2,
                d_ff=16,
                num_experts=4,
                router=router,
            )
        )

    assert model("top_k").supports_left_padding
    assert not model("graph_of_tokens").supports_left_padding


def test_a_failing_job_fails_alone_and_its_batch_answers(served):
    """A job the model cannot run (a token id past the embedding) shares a batch with
    good ones: the batch runs again job by job, so only that job fails."""
    prompts = [served.encode(t) for t in ("def add(a, b):", "x = 1", "return")]
    with GenerationEngine(served.model, served.tokenizer, pad_batching=True) as engine:
        alone = [engine.submit(Job(p, 5)).result(timeout=120).text for p in prompts]
    gate = threading.Event()
    with GenerationEngine(served.model, served.tokenizer, pad_batching=True) as engine:
        engine.submit(Job(served.encode("x"), max_tokens=1, on_text=lambda _: gate.wait(30)))
        bad = engine.submit(Job([served.vocab_size + 5, 1], 5))
        good = [engine.submit(Job(p, 5)) for p in prompts]
        gate.set()
        assert [f.result(timeout=120).text for f in good] == alone
        assert isinstance(bad.exception(timeout=120), IndexError)
        stats = dict(engine.stats)
    assert stats["largest_batch"] >= 4  # they met in one batch, which then ran job by job
