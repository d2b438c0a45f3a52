"""What a folder written by a dynroute command is, told from the files in it.

Every command that takes a folder (``dynroute eval RUN``, ``lora train BASE``, ``llm route
ROUTER``, ...) may be handed a folder another command wrote. :func:`folder_kind` names it
so that the refusal says what was given and what to pass instead, in one line
(``tests/cli/test_folder_contract.py`` runs every such command on every kind below). A
command that writes a new kind of folder adds one :class:`FolderKind` to
:data:`FOLDER_KINDS`.

Example:
    >>> import tempfile; from pathlib import Path
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = (run / "run.json").write_text('{"lora": {}, "base": "runs/tiny"}')
    >>> describe_folder(run).split(" (")[0].endswith("is a LoRA-experts run")
    True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FOLDER_KINDS",
    "QUERY_ROUTER",
    "FolderKind",
    "describe_folder",
    "folder_kind",
    "run_folders",
]


def _json(path: Path) -> dict[str, Any]:
    """A JSON object file's content, ``{}`` when missing or not an object (never raises:
    telling kinds apart must not fail on the damaged files the loaders report)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_folders(path: Path) -> list[Path]:
    """The training runs directly inside ``path`` (sub-folders with a ``run.json``), sorted.

    Example:
        >>> run_folders(Path("/nonexistent"))
        []
    """
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "run.json").is_file())


def _lora_run(p: Path) -> bool:
    return (p / "adapters" / "lora_experts.json").is_file() or "lora" in _json(p / "run.json")


def _comparison(p: Path) -> bool:
    return (p / "results.json").is_file() and bool(run_folders(p))


def _query_router(p: Path) -> bool:
    return (p / "tensors.safetensors").is_file() and {"router", "models"} <= set(
        _json(p / "config.json")
    )


def _training_run(p: Path) -> bool:
    return (p / "run.json").is_file() and (
        (p / "model" / "config.json").is_file() or (p / "checkpoint.pt").is_file()
    )


def _model_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _lora_hint(p: Path) -> str:
    base = _json(p / "run.json").get("base")
    told = f"; its base model is {base}" if base else ""
    return f"its per-domain losses are in {p / 'result.json'}{told}"


def _comparison_hint(p: Path) -> str:
    runs = run_folders(p)
    names = ", ".join(r.name for r in runs)
    return f"it holds {len(runs)} runs; pass one of them, e.g. {runs[0]} ({names})"


@dataclass(frozen=True)
class FolderKind:
    """One kind of folder a dynroute command writes.

    Attributes:
        name: what it is, for a sentence ("a LoRA-experts run").
        written_by: the command that writes it.
        model: whether ``dynroute.checkpoints.load_model`` reads it as a model.
        matches: whether a folder is of this kind (from its files only).
        hint: where to go from here, for a command that does not take this kind.
    """

    name: str
    written_by: str
    model: bool
    matches: Callable[[Path], bool]
    hint: Callable[[Path], str] = lambda p: ""


#: What ``dynroute llm fit`` writes (the one kind ``llm serve/eval`` read).
QUERY_ROUTER = FolderKind("a fitted query router", "dynroute llm fit", False, _query_router)

#: Every kind, most specific first: the first that matches is the folder's kind.
FOLDER_KINDS: tuple[FolderKind, ...] = (
    FolderKind("a LoRA-experts run", "dynroute lora train", False, _lora_run, _lora_hint),
    FolderKind(
        "an adapter library",
        "dynroute lora library build",
        False,
        lambda p: (p / "library.json").is_file(),
    ),
    FolderKind(
        "a comparison of trained routers",
        "dynroute demo / dynroute bench frontier",
        False,
        _comparison,
        _comparison_hint,
    ),
    FolderKind(
        "a routing-analysis report",
        "dynroute analyze",
        False,
        lambda p: (p / "stats.json").is_file() and (p / "report.html").is_file(),
    ),
    FolderKind(
        "an adaptive-computation report",
        "dynroute adaptive report",
        False,
        lambda p: (p / "adaptive_report.json").is_file(),
    ),
    FolderKind(
        "a query-routing report",
        "dynroute llm report",
        False,
        lambda p: (p / "result.json").is_file() and (p / "report.html").is_file(),
    ),
    QUERY_ROUTER,
    FolderKind("a training run", "dynroute train / dynroute adaptive train", True, _training_run),
    FolderKind("a model folder", "save_pretrained / dynroute patch", True, _model_folder),
)


def folder_kind(path: str | Path) -> FolderKind | None:
    """The kind of ``path`` (the first of :data:`FOLDER_KINDS` that matches), or None.

    Example:
        >>> folder_kind("/nonexistent") is None
        True
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    return next((kind for kind in FOLDER_KINDS if kind.matches(folder)), None)


def describe_folder(path: str | Path) -> str | None:
    """``"<path> is <kind> (written by `<command>`)[; <hint>]"``, or None for an unknown
    folder: the first half of a refusal, whose second half says what the command takes.

    Example:
        >>> describe_folder("/nonexistent") is None
        True
    """
    kind = folder_kind(path)
    if kind is None:
        return None
    hint = kind.hint(Path(path))
    return f"{path} is {kind.name} (written by `{kind.written_by}`){'; ' + hint if hint else ''}"
