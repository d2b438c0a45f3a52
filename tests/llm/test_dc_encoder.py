"""`dc:encoder=finetune`: WordLlama's token rows trained with RouterDC's losses."""

import numpy as np
import pytest
import torch

from dynroute.llm import OutcomeTable, load_router, make_embedder, make_query_router
from dynroute.llm.routers.dc import TokenBags

# Tiny fits: a second thread only adds barrier waits per op (seconds on a busy box).
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
]  # fits over the wordllama table: ~10 s

SPEC = {"name": "dc", "encoder": "finetune", "steps": 40, "clusters": 4, "batch": 32}


def toy(n=40, seed=0):
    """Arithmetic suits 'math', geography 'geo'; 'big' is good at both."""
    rng = np.random.default_rng(seed)
    queries, quality = [], []
    for i in range(n):
        if i % 2:
            queries.append(f"add {rng.integers(100)} and {rng.integers(100)}, what is the sum")
            quality.append([1, 0, 1])
        else:
            queries.append(f"which city is the capital of country {rng.integers(100)}")
            quality.append([0, 1, 1])
    return OutcomeTable.from_rows(queries, ["math", "geo", "big"], quality, [[1, 1, 10]] * n)


@pytest.fixture(scope="module")
def fitted():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: `one_thread` is not set up yet
    try:
        return make_query_router(SPEC).fit(toy())
    finally:
        torch.set_num_threads(threads)


def test_pooling_is_wordllamas():
    e = make_embedder("wordllama")
    texts = ["add two and three", "capital of France?", ""]
    z = TokenBags.of(e.token_ids(texts)).pool(e.table())
    z = torch.nn.functional.normalize(z, dim=1)
    assert torch.allclose(z, e.encode(texts), atol=1e-6)


def test_trains_predicts_and_learns_the_toy_task(fitted):
    test = toy(20, 1)
    pred = fitted.predict(test.queries)
    assert pred.shape == (20, 3) and torch.allclose(pred.sum(1), torch.ones(20))
    right = torch.tensor([0 if "add" in q else 1 for q in test.queries])
    assert (pred[:, :2].argmax(1) == right).float().mean() >= 0.9
    assert fitted.embedder is None  # it reads the text itself: no shared view to fit


def test_save_load_round_trip_is_exact_and_small(fitted, tmp_path):
    test = toy(20, 1)
    fitted.save(tmp_path / "r")
    again = load_router(tmp_path / "r")
    assert again.to_dict() == fitted.to_dict() and again.encoder == "finetune"
    assert torch.equal(again.predict(test.queries), fitted.predict(test.queries))
    # only the rows seen in training travel (float16), not the 32000 x 256 table
    size = (tmp_path / "r" / "tensors.safetensors").stat().st_size
    t = fitted.tensors
    head = sum(v.numel() * v.element_size() for k, v in t.items() if k not in ("delta", "vocab"))
    rows = len(t["vocab"]) * (256 * 2 + 4)
    assert head + rows < size < head + rows + 10_000 and rows < 100 * 256 * 2


def test_deterministic_given_the_seed(fitted):
    again = make_query_router(SPEC).fit(toy())
    other = make_query_router(SPEC, seed=1).fit(toy())
    assert all(torch.equal(again.tensors[k], v) for k, v in fitted.tensors.items())
    assert not torch.equal(other.tensors["delta"], fitted.tensors["delta"])


def test_the_table_changes_only_where_trained(fitted):
    words = make_embedder("wordllama")
    seen = sorted({t for b in words.token_ids(toy().queries) for t in b})
    assert fitted.tensors["vocab"].tolist() == seen  # one changed row per token seen
    moved = fitted.tensors["delta"].float().norm(dim=1)
    assert (moved > 0).float().mean() > 0.9 and moved.max() < 1.0  # moved, pulled back
    kept = make_query_router({**SPEC, "table_lr": 0.0}).fit(toy())
    assert not kept.tensors["delta"].any()  # table_lr=0: the shipped rows
    pulled = make_query_router({**SPEC, "pull": 10.0}).fit(toy())
    assert pulled.tensors["delta"].float().norm() < fitted.tensors["delta"].float().norm()


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ValueError, match="frozen, finetune"):
        make_query_router("dc:encoder=bert")
