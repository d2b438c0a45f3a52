"""Views of the query: WordLlama's shipped embedding, concatenation, save/load, the flag."""

import json
import subprocess
import sys

import pytest
import torch

from dynroute.llm import OutcomeTable, load_router, make_query_router
from dynroute.llm.embed import EMBEDDERS, embedder_label, make_embedder

QUERIES = ["add 3 and 4", "sum of two numbers", "capital of France", "largest city of Spain"]


def table():
    """Math queries suit 'math', geography 'geo'."""
    quality = [[1, 0], [1, 0], [0, 1], [0, 1]] * 5
    return OutcomeTable.from_rows(QUERIES * 5, ["math", "geo"], quality, [[1.0, 1.0]] * 20)


def test_wordllama_loads_offline_and_sees_meaning():
    e = make_embedder("wordllama").fit(QUERIES)
    z = e.encode(QUERIES)
    assert z.shape == (4, 256) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = z @ z.T  # the two math queries share no word, yet are closer than math–geography
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 1]


@pytest.mark.parametrize("spec", ["wordllama", "tfidf_svd+wordllama"])
def test_router_round_trip_keeps_its_embedder(spec, tmp_path):
    train = table()
    emb = make_embedder(spec).fit(train.queries)
    r = make_query_router("knn:k=3").fit(train, emb)
    r.save(tmp_path / "r")
    r2 = load_router(tmp_path / "r")
    assert embedder_label(r2.embedder.config()) == spec
    assert torch.equal(r2.predict(QUERIES), r.predict(QUERIES))
    assert r.route(["what is 7 plus 8"]) == ["math"]


def test_concatenation_has_unit_rows_and_every_part():
    e = make_embedder("tfidf_svd+wordllama")
    e.parts[0] = make_embedder({"name": "tfidf_svd", "dim": 3})
    e.dim = 3 + 256
    z = e.fit(QUERIES).encode(QUERIES)
    assert z.shape == (4, 259) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_unknown_embedder_names_the_known_ones():
    with pytest.raises(ValueError, match="known: " + ", ".join(sorted(EMBEDDERS))):
        make_embedder("word2vec")


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_cli_embedder_flag(tmp_path):
    rows = [
        {"query": q, "model": m, "quality": float((i % 4 < 2) == (m == "small")), "cost": c}
        for i, q in enumerate(QUERIES * 5)
        for m, c in (("small", 0.001), ("big", 0.01))
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    def llm(*args):
        cmd = [sys.executable, "-m", "dynroute.cli", "llm", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    r = llm("eval", "--train", tmp_path / "t.jsonl", "--query-router", "knn",
            "--embedder", "wordllama", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["embedder"] == "wordllama"
    r = llm("fit", "--train", tmp_path / "t.jsonl", "--embedder", "word2vec", "--out",
            tmp_path / "m")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown embedder 'word2vec'" in r.stderr and not (tmp_path / "m").exists()
