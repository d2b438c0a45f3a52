"""Loaders, splits and their errors."""

import csv
import gzip
import json

import numpy as np
import pytest

from dynroute.llm.data import (
    DATASETS,
    OutcomeTable,
    TableError,
    load_dataset,
    load_table,
    resolve_tables,
    split_by_query,
    write_wide_jsonl,
)


def write_long(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


LONG = [
    {"query": "q1", "model": "a", "quality": 1, "cost": 0.1},
    {"query": "q1", "model": "b", "quality": 0, "cost": 1.0},
    {"query": "q2", "model": "a", "quality": 0, "cost": 0.1},
    {"query": "q2", "model": "b", "quality": 1, "cost": 1.0},
]


def test_long_jsonl_and_csv(tmp_path):
    write_long(tmp_path / "t.jsonl", LONG)
    t = load_table(tmp_path / "t.jsonl")
    assert t.models == ("a", "b") and t.queries == ("q1", "q2")
    assert t.quality.tolist() == [[1, 0], [0, 1]]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["query", "model", "quality", "cost"])
        w.writeheader()
        w.writerows(LONG)
    t2 = load_table(tmp_path / "t.csv")
    np.testing.assert_array_equal(t2.cost, t.cost)


def test_routerbench_wide_csv(tmp_path):
    path = tmp_path / "rb.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "sample_id",
                "prompt",
                "eval_name",
                "gpt-4",
                "gpt-4|total_cost",
                "mixtral",
                "mixtral|total_cost",
                "gpt-4|model_response",
            ]
        )
        w.writerow([0, "hi", "mmlu", 1.0, 0.01, 0.0, 0.001, "x"])
        w.writerow([1, "yo", "mmlu", 1.0, 0.02, 1.0, 0.002, "y"])
    t = load_table(path)
    assert t.models == ("gpt-4", "mixtral")
    assert t.cost.tolist() == [[0.01, 0.001], [0.02, 0.002]]


def test_routerbench_wide_pickle(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "sample_id": [0, 1],
            "prompt": ["hi", "yo"],
            "eval_name": ["mmlu", "mmlu"],
            "gpt-4": [1.0, 1.0],
            "gpt-4|total_cost": [0.01, 0.02],
            "mixtral": [0.0, 1.0],
            "mixtral|total_cost": [0.001, 0.002],
            "gpt-4|model_response": ["x", "y"],
        }
    )
    frame.to_pickle(tmp_path / "rb.pkl")
    t = load_table(tmp_path / "rb.pkl")
    assert t.models == ("gpt-4", "mixtral") and t.queries == ("hi", "yo")
    assert t.cost.tolist() == [[0.01, 0.001], [0.02, 0.002]]
    assert t.quality.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_wide_roundtrip_gz(tmp_path):
    t = OutcomeTable.from_rows(
        ["x\u2028y", "z"], ["a", "b"], [[1, 0], [0.5, 1]], [[1, 2], [1, 2]], ["train", "test"]
    )
    write_wide_jsonl(t, tmp_path / "w.jsonl.gz")
    u = load_table(tmp_path / "w.jsonl.gz")
    assert u.queries == t.queries and u.split == t.split
    np.testing.assert_array_equal(u.quality, t.quality)


def test_missing_cost_column(tmp_path):
    write_long(
        tmp_path / "nocost.jsonl", [{k: v for k, v in r.items() if k != "cost"} for r in LONG]
    )
    with pytest.raises(TableError, match=r"nocost\.jsonl.*missing column.*cost"):
        load_table(tmp_path / "nocost.jsonl")
    path = tmp_path / "rb.csv"
    path.write_text("prompt,gpt-4\nhi,1\n")
    with pytest.raises(TableError, match=r"rb\.csv: missing cost columns"):
        load_table(path)


def test_nan_quality(tmp_path):
    rows = [dict(r) for r in LONG]
    rows[2]["quality"] = None
    write_long(tmp_path / "nan.jsonl", rows)
    with pytest.raises(TableError, match=r"nan\.jsonl row 3: NaN"):
        load_table(tmp_path / "nan.jsonl")
    write_long(tmp_path / "hole.jsonl", LONG[:3])  # q2 has no outcome for model b
    with pytest.raises(TableError, match=r"hole\.jsonl.*missing or NaN quality.*'b'"):
        load_table(tmp_path / "hole.jsonl")


def test_unknown_model_names(tmp_path):
    write_long(tmp_path / "train.jsonl", LONG)
    write_long(tmp_path / "test.jsonl", [dict(r, model=r["model"].replace("b", "c")) for r in LONG])
    with pytest.raises(TableError, match=r"test\.jsonl.*unknown model.*'c'"):
        resolve_tables(None, tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    t = load_table(tmp_path / "train.jsonl")
    with pytest.raises(TableError, match="unknown model"):
        t.select_models(["zzz"])


def test_bad_files(tmp_path):
    with pytest.raises(TableError, match=r"missing\.jsonl: no such file"):
        load_table(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(TableError, match=r"bad\.jsonl: line 1"):
        load_table(tmp_path / "bad.jsonl")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(TableError, match="unknown table format"):
        load_table(tmp_path / "t.txt")
    with pytest.raises(TableError, match="unknown dataset"):
        load_dataset("nope")


def test_split_by_query_keeps_duplicates_together():
    queries = [f"q{i % 7}" for i in range(40)]
    t = OutcomeTable.from_rows(queries, ["m"], np.ones((40, 1)), np.ones((40, 1)))
    for seed in range(5):
        tr, te = split_by_query(t, 0.3, seed)
        assert not set(tr.queries) & set(te.queries)
        assert tr.num_queries + te.num_queries == 40
    a = split_by_query(t, 0.3, 1)[1].queries
    assert a == split_by_query(t, 0.3, 1)[1].queries


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shipped_datasets(name):
    train, test = load_dataset(name)
    assert train.models == test.models and train.num_models >= 2
    assert not {q.strip() for q in train.queries} & {q.strip() for q in test.queries}
    assert (train.cost > 0).all() and np.isfinite(train.quality).all()
    assert train.quality.min() >= 0 and train.quality.max() <= 1


def test_shipped_files_are_small():
    from importlib import resources

    folder = resources.files("dynroute.llm") / "datasets"
    total = sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(".gz"))
    assert total < 5_000_000
    with gzip.open(next(p for p in folder.iterdir() if p.name.endswith(".gz"))) as f:
        assert json.loads(f.readline())["cost"]
