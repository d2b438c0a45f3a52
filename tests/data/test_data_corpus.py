"""Corpus loading: stdlib, user files/folders, saved datasets and error messages."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from dynroute.data import corpus as corpus_mod
from dynroute.data.corpus import (
    CorpusError,
    corpus_key,
    is_saved_dataset,
    load_corpus,
    stdlib_corpus,
    stdlib_files,
)
from dynroute.data.splitting import split_names


def test_stdlib_files_sorted_and_filtered() -> None:
    files = stdlib_files()
    rels = [rel for rel, _ in files]
    assert len(rels) > 200
    assert rels == sorted(rels)
    for rel in rels:
        parts = set(rel.split("/")[:-1])
        assert not parts & {"test", "tests", "site-packages", "idle_test"}, rel
        assert rel.endswith(".py")


def test_stdlib_split_deterministic_and_disjoint() -> None:
    rels = [rel for rel, _ in stdlib_files()]
    a, b = split_names(rels), split_names(list(rels))
    assert a == b
    assert set(a["train"]).isdisjoint(a["validation"])
    assert 0.02 < len(a["validation"]) / len(rels) < 0.10


def test_stdlib_corpus_nonempty_and_capped() -> None:
    val = stdlib_corpus("validation", max_bytes=200_000)
    train = stdlib_corpus("train", max_bytes=200_000)
    assert val and train
    assert sum(len(d.encode()) for d in val) <= 200_000
    assert set(val).isdisjoint(train)
    assert val == stdlib_corpus("validation", max_bytes=200_000)
    assert load_corpus(None, "validation", max_bytes=200_000) == val
    assert load_corpus("stdlib", "validation", max_bytes=200_000) == val


def _make_folder(root: Path, n: int = 40) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: nope\n")
    (root / ".hidden.txt").write_text("hidden\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for i in range(n):
        folder = root / "sub" if i % 2 else root
        (folder / f"doc_{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    return root


def test_load_folder_split_by_file(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "corpus")
    train = load_corpus(root, "train")
    val = load_corpus(str(root), "validation")
    assert len(train) + len(val) == 40  # hidden, binary, non-UTF-8 files skipped
    assert train and val
    assert set(train).isdisjoint(val)
    assert load_corpus(root, "validation") == val
    capped = load_corpus(root, "train", max_bytes=300)
    assert sum(len(d.encode()) for d in capped) <= 300


def test_load_single_file_head_tail(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    text = "".join(f"line {i} of the book\n" for i in range(200))
    path.write_text(text)
    train = load_corpus(path, "train")
    val = load_corpus(path, "validation")
    assert len(train) == len(val) == 1
    assert train[0] + val[0] == text
    assert 0 < len(val[0]) < 0.1 * len(text)


def test_folder_with_one_file_is_split_like_a_file(tmp_path: Path) -> None:
    (tmp_path / "only.md").write_text("".join(f"# heading {i}\n" for i in range(100)))
    assert load_corpus(tmp_path, "train") and load_corpus(tmp_path, "validation")


def test_missing_path_error_is_clear(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"does not exist.*'stdlib'"):
        load_corpus(tmp_path / "nope", "train")
    with pytest.raises(CorpusError, match="does not exist"):
        corpus_key(tmp_path / "nope")


def test_empty_folder_and_empty_split_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no readable UTF-8 text files"):
        load_corpus(tmp_path / "empty", "train")
    (tmp_path / "one_char.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"'validation' split .* is empty"):
        load_corpus(tmp_path / "one_char.txt", "validation")
    with pytest.raises(ValueError, match="unknown split"):
        load_corpus(None, "dev")  # type: ignore[arg-type]


def test_corpus_key_tracks_changes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "c", n=4)
    k1 = corpus_key(root)
    assert k1 == corpus_key(str(root))
    (root / "new.txt").write_text("new document\n")
    assert corpus_key(root) != k1
    assert corpus_key(None) == corpus_key("stdlib")
    assert corpus_key(None).startswith("stdlib-py")


# ----------------------------------------------------------------------------- datasets


def _fake_saved_dataset(path: Path, marker: str) -> Path:
    path.mkdir()
    (path / marker).write_text("{}")
    return path


def test_saved_dataset_without_datasets_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _fake_saved_dataset(tmp_path / "ds", "dataset_info.json")
    assert is_saved_dataset(path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install dynroute\[datasets\]"):
        load_corpus(path, "train")


class _FakeDataset:
    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key: str) -> list[Any]:
        return self._columns[key]


def test_saved_dataset_logic_with_fake_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [f"row {i}" for i in range(40)]
    saved: dict[str, Any] = {}
    fake = types.ModuleType("datasets")
    fake.load_from_disk = lambda p: saved[p]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)

    single = _fake_saved_dataset(tmp_path / "single", "dataset_info.json")
    saved[str(single)] = _FakeDataset({"text": rows, "id": list(range(40))})
    assert load_corpus(single, "train") == rows[:38]
    assert load_corpus(single, "validation") == rows[38:]
    with pytest.raises(CorpusError, match=r"no column 'body'.*text_column"):
        load_corpus(single, "train", text_column="body")
    with pytest.raises(CorpusError, match="not str"):
        load_corpus(single, "train", text_column="id")

    dd = _fake_saved_dataset(tmp_path / "dict", "dataset_dict.json")
    saved[str(dd)] = {
        "train": _FakeDataset({"body": ["a", "b"]}),
        "validation": _FakeDataset({"body": ["c"]}),
    }
    assert load_corpus(dd, "train", text_column="body") == ["a", "b"]
    assert load_corpus(dd, "validation", text_column="body") == ["c"]
    assert corpus_key(dd, text_column="body") != corpus_key(dd)


def test_saved_dataset_real(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    texts = [f"example {i}\n" for i in range(30)]
    ds_dict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts[:25]}),
            "validation": datasets.Dataset.from_dict({"text": texts[25:]}),
        }
    )
    ds_dict.save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(tmp_path / "dd", "train") == texts[:25]
    assert load_corpus(tmp_path / "dd", "validation") == texts[25:]
    datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "one"))
    train = load_corpus(tmp_path / "one", "train", text_column="content")
    val = load_corpus(tmp_path / "one", "validation", text_column="content")
    assert train + val == texts and val


def test_corpus_module_exports() -> None:
    assert set(corpus_mod.__all__) >= {"load_corpus", "stdlib_corpus", "CorpusError"}
