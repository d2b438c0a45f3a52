"""The one checkpoint loader: any model folder dynroute reads, with its tokenizer and text.

:func:`load_model` recognises, in order: a ``dynroute train`` run folder (``run.json``
+ ``model/`` or ``checkpoint.pt``), a folder of ``DynMoEForCausalLM`` weights (its
``model/`` export carries ``dynroute_data.json``; others may have a ``tokenizer.json``),
and a transformers MoE checkpoint ``dynroute.hf`` adapts (patched or not). A folder with
none of these is searched for a sub-folder with a ``config.json`` (``final``, ``best``, ...).
``dynroute eval``, ``dynroute analyze`` and ``dynroute.train`` all load through it; it reads
the run's files itself, so analysis never imports ``dynroute.train``.

A ``model/`` folder exported by ``dynroute train`` is self-contained: besides the weights it
holds the tokenizer (``tokenizer.json`` + ``tokenizer_config.json``, so
``AutoTokenizer.from_pretrained`` loads it), the corpus settings (``dynroute_data.json``),
the evaluation defaults and step (``dynroute_run.json``) and the evaluation set itself
(``eval_windows.npy``): it evaluates and analyses after the training text has moved, and
on another machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from dynroute.common.folders import describe_folder, folder_kind
from dynroute.common.registry import Registry, UnknownNameError
from dynroute.data import (
    CorpusError,
    PreparedData,
    encode_documents,
    eval_windows,
    load_corpus,
    prepare_data,
)
from dynroute.models import DynMoEForCausalLM

__all__ = [
    "CHECKPOINT_NAMES",
    "DATA_FILE",
    "EVAL_WINDOWS_FILE",
    "MODEL_FOLDERS",
    "MODEL_TYPES",
    "RUN_INFO_FILE",
    "CorruptFileError",
    "LoadedModel",
    "NotAModelError",
    "is_own_model_type",
    "load_model",
    "model_class",
    "prepare_run_data",
    "read_json",
    "register_model_type",
    "resolve_checkpoint",
    "router_text",
    "tokenize_documents",
]

CHECKPOINT_NAMES = ("final", "best", "last", "latest", "checkpoint", "model")

#: dynroute's own model types (``config.json``'s ``model_type``) and their classes. A model
#: family registers itself (:func:`register_model_type`); ``dynroute.adaptive`` is found
#: through its ``dynroute.plugins`` entry point the first time a folder of its type is read.
MODEL_TYPES: Registry[PreTrainedModel] = Registry("model type", PreTrainedModel, set_name=False)


def register_model_type(cls: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """Class decorator: let :func:`load_model` read folders of ``cls.config_class.model_type``.

    Example:
        >>> MODEL_TYPES["dynmoe"].__name__
        'DynMoEForCausalLM'
    """
    return MODEL_TYPES.register(cls.config_class.model_type)(cls)


def model_class(model_type: str | None) -> Any:
    """The class of one of dynroute's own model types (:data:`MODEL_TYPES`).

    Example:
        >>> model_class("dynmoe").__name__
        'DynMoEForCausalLM'
    """
    return MODEL_TYPES.lookup(model_type or "dynmoe")


def is_own_model_type(model_type: str | None) -> bool:
    """Whether ``model_type`` is one of dynroute's own (else: a transformers family).

    Example:
        >>> is_own_model_type("dynmoe"), is_own_model_type("mixtral")
        (True, False)
    """
    return MODEL_TYPES.knows(str(model_type))


register_model_type(DynMoEForCausalLM)


DATA_FILE = "dynroute_data.json"
"""Written by ``dynroute.train`` next to exported weights: the corpus they were trained on."""
RUN_INFO_FILE = "dynroute_run.json"
"""Written next to exported weights: step, tokens and evaluation shapes of the run."""
EVAL_WINDOWS_FILE = "eval_windows.npy"
"""Written next to exported weights: the evaluation set, ids ``[n, seq_len + 1]``."""


class CorruptFileError(ValueError):
    """A file dynroute wrote cannot be read; the message names it and what to do."""


class NotAModelError(ValueError):
    """A folder another dynroute command wrote (a LoRA run, a report, a query router, a
    comparison of runs) given where a model is read; the message says which and what to do."""


MODEL_FOLDERS = (
    "a command that reads a model takes the --out folder of `dynroute train`, its model/ "
    "folder, or a transformers MoE checkpoint folder"
)


def read_json(path: Path, hint: str = "") -> Any:
    """``json.loads`` of a file we wrote, or one line naming the file if it is damaged.

    Example:
        >>> import tempfile; bad = Path(tempfile.mkdtemp()) / "run.json"
        >>> _ = bad.write_text("{")
        >>> read_json(bad, "delete it")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        dynroute.checkpoints.CorruptFileError: .../run.json is corrupt (not valid JSON: ...
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(
            f"{path} is corrupt (not valid JSON: {err}){'; ' + hint if hint else ''}"
        ) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder holding ``config.json`` + weights: ``path`` itself or a checkpoint in it.

    A training run folder is searched for a sub-folder with a ``config.json``:
    ``final``, ``best``, ``last``, ... ``model``, else the only one found one or two levels
    down; never a guess among several.

    Raises:
        FileNotFoundError: with what was looked for.
        NotAModelError: a folder of another kind (:mod:`dynroute.common.folders`), or one
            holding several models (all listed).

    Example:
        >>> resolve_checkpoint("/nonexistent")
        Traceback (most recent call last):
        FileNotFoundError: /nonexistent does not exist; pass the --out folder of `dynroute train`...
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"{root} does not exist; pass the --out folder of `dynroute train`, its model/ "
            "folder, or a transformers MoE checkpoint folder"
        )
    kind = folder_kind(root)
    if kind is not None and not kind.model:
        raise NotAModelError(f"{describe_folder(root)}; {MODEL_FOLDERS}")
    if (root / "config.json").is_file():
        return root
    found = [p.parent for p in (*root.glob("*/config.json"), *root.glob("*/*/config.json"))]
    subs = [s for s in found if getattr(folder_kind(s), "model", True)]  # not a query router
    if not subs:
        raise FileNotFoundError(
            f"{root} has no config.json (nor any sub-folder with one); pass the --out folder "
            "of `dynroute train`, its model/ folder, or a folder written by save_pretrained "
            "(config.json + model.safetensors)"
        )
    for name in CHECKPOINT_NAMES:  # a run's own export (run/model, run/final, ...)
        if (root / name / "config.json").is_file():
            return root / name
    if len(subs) == 1:
        return subs[0]
    names = ", ".join(str(s) for s in sorted(subs))
    raise NotAModelError(f"{root} holds {len(subs)} models; pass the one you mean: {names}")


@dataclass
class LoadedModel:
    """A model ready to evaluate or analyse, with its tokenizer and where its text is.

    Attributes:
        model: the causal LM (eval mode); folder: where its weights are.
        tokenizer: ``tokenizers.Tokenizer`` (dynroute) or a transformers tokenizer.
        kind: ``"dynroute-run"``, ``"dynmoe-model"`` or ``"hf-moe"``.
        data: the corpus settings it was trained on (``prepare_data`` keyword
            arguments; ``source="stdlib"`` when unknown).
        prepared: the run's prepared corpus (cached token files) when its tokenizer
            came from it, else None.
        seq_len, batch_size: default evaluation shapes (the run's own when known).
        windows: the run's evaluation set ``[n, seq_len + 1]`` (``eval_windows.npy``), if
            saved; eval_batches: its size in batches when it must be cut from the split
            (None: every window); step: the training step of the weights, when known.
    """

    model: nn.Module
    folder: Path
    tokenizer: Any
    kind: str
    data: dict[str, Any]
    prepared: PreparedData | None
    seq_len: int
    batch_size: int
    windows: np.ndarray | None = None
    eval_batches: int | None = None
    step: int | None = None

    def eval_set(self) -> np.ndarray:
        """The default evaluation set, ids ``[n, seq_len + 1]``: the same windows everywhere.

        ``dynroute train`` evaluates on these windows (``eval_batches * batch_size`` of
        them, evenly spaced over the validation split) and saves them with the model;
        ``dynroute eval`` and ``dynroute analyze`` use them by default, so their numbers
        are the training log's.
        """
        if self.windows is not None:
            return self.windows
        limit = None if self.eval_batches is None else self.eval_batches * self.batch_size
        return eval_windows(self.tokens(), self.seq_len, limit)

    def tokens(
        self,
        data: str | Path | None = None,
        split: str = "validation",
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Held-out ids ``[L]``: the run's cached split, or ``data`` encoded with our tokenizer.

        Another corpus is always encoded with the model's own tokenizer (one trained on
        that corpus would make the loss meaningless for this model).

        Args:
            data: a corpus for ``dynroute.data.load_corpus`` (None: the training corpus).
            split: ``"validation"`` or ``"train"``.
            max_tokens: tokens needed (bounds how much text is read and tokenized).
        """
        if data is None:
            prepared = self.prepared or self._prepare()
            if prepared is not None:
                return np.asarray(
                    prepared.val_tokens if split == "validation" else prepared.train_tokens
                )
            if self.windows is not None and split == "validation":
                return self.windows.reshape(-1)
            if not self._corpus_gone():  # text there, but cached under another tokenizer
                return self.tokens(self.data.get("source") or "stdlib", split, max_tokens)
            raise FileNotFoundError(
                f"the training corpus {self.data.get('source')} of {self.folder} is not there "
                f"and {self.folder} holds no {EVAL_WINDOWS_FILE}; pass --data with held-out text"
            )
        if Path(data).is_file():  # a file is read whole, as dynroute.hf.evaluate_text does
            text = Path(data).read_bytes().decode("utf-8", errors="replace")
            cap = None if max_tokens is None else 8 * (max_tokens + 1)
            return tokenize_documents(self.tokenizer, [text[:cap] if cap else text])
        source = None if data in ("", "stdlib") else data
        # ~4 bytes per token: 8 bytes per wanted token fills max_tokens without reading more.
        cap = None if max_tokens is None else 8 * (max_tokens + 1)
        column = self.data.get("text_column", "text")
        docs = load_corpus(source, split, text_column=column, max_bytes=cap)  # type: ignore[arg-type]
        return tokenize_documents(self.tokenizer, docs)

    def _prepare(self) -> PreparedData | None:
        """The training corpus's cached tokens, or None when that text is gone or was
        tokenized by another tokenizer than the model's (a bare folder with its own
        tokenizer.json and no corpus settings: ids beyond its vocabulary otherwise)."""
        try:
            prepared = prepare_run_data(self.data)
        except (FileNotFoundError, CorpusError):
            return None
        vocab = getattr(self.tokenizer, "get_vocab", None)
        if vocab is not None and prepared.tokenizer.get_vocab() != vocab():
            return None
        return prepared

    def _corpus_gone(self) -> bool:
        source = self.data.get("source")
        return source not in (None, "", "stdlib") and not Path(source).exists()


def tokenize_documents(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Flat ids ``[L]`` of ``docs`` with an end-of-text id after each document.

    ``tokenizer`` is either kind :func:`load_model` returns: a ``tokenizers.Tokenizer``
    (dynroute's own; :func:`dynroute.data.encode_documents`) or a transformers tokenizer
    (its ``eos_token_id`` ends each document when it has one).

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["abc abc abd"] * 20, vocab_size=270)
        >>> ids = tokenize_documents(tok, ["abc", "abd"])
        >>> ids.ndim, int((ids == tok.token_to_id("<|endoftext|>")).sum())
        (1, 2)
    """
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return encode_documents(tokenizer, docs)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def prepare_run_data(data: dict[str, Any]) -> PreparedData:
    """``prepare_data`` for a run's ``[data]`` table (the cache entry its training used).

    Example:
        >>> prepare_run_data({"source": "stdlib", "vocab_size": 4096})  # doctest: +SKIP
    """
    source = None if data.get("source") in ("", "stdlib", None) else data["source"]
    return prepare_data(source, **{k: v for k, v in data.items() if k != "source"})


def load_model(path: str | Path) -> LoadedModel:
    """Load any checkpoint dynroute evaluates or analyses (see the module docstring).

    Args:
        path: a ``dynroute train`` run folder, its ``model/`` folder, a ``save_pretrained``
            folder of a DynMoE model, a transformers MoE checkpoint (routing saved by
            ``dynroute patch`` is re-applied), or a folder holding one of these.

    Returns:
        LoadedModel.

    Raises:
        FileNotFoundError, ValueError: saying what was found and what to pass instead.

    Example:
        >>> loaded = load_model("runs/tiny")                    # doctest: +SKIP
        >>> loaded.kind, loaded.tokens().shape                  # doctest: +SKIP
        ('dynroute-run', (61440,))
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one on screen

    root = Path(path)
    kind = folder_kind(root)
    if kind is not None and not kind.model:  # before the run.json of a LoRA run is read
        raise NotAModelError(f"{describe_folder(root)}; {MODEL_FOLDERS}")
    exported = root / "model" / "config.json"
    has_ckpt = (root / "checkpoint.pt").is_file()
    if (root / "run.json").is_file() and (exported.is_file() or has_ckpt):
        if exported.is_file():
            return _load_dynroute_folder(root / "model", run_dir=root)
        # Killed before the first export: use the training checkpoint itself.
        run = read_json(root / "run.json", "delete it and rerun `dynroute train` to resume")
        state = _load_training_checkpoint(root / "checkpoint.pt")
        cls = model_class(state["model_config"].get("model_type"))
        model = cls(cls.config_class(**state["model_config"]))
        model.load_state_dict(state["model"])
        data, train = run["data"], run["train"]
        prepared = prepare_run_data(data)
        return LoadedModel(
            model.eval(), root, prepared.tokenizer, "dynroute-run", data, prepared,
            int(train["seq_len"]), int(train["batch_size"]),
            eval_batches=train.get("eval_batches"), step=int(state["step"]),
        )  # fmt: skip
    folder = resolve_checkpoint(root)
    config = read_json(folder / "config.json", _rewrite_hint(folder))
    if not is_own_model_type(config.get("model_type")):
        return _load_hf(folder, config)
    return _load_dynroute_folder(folder)


def _rewrite_hint(folder: Path) -> str:
    """What to do about a damaged file in an exported model folder."""
    run = folder.parent
    if folder.name == "model" and (run / "checkpoint.pt").is_file():
        return (
            f"if {run / 'checkpoint.pt'} is intact, rerunning the same `dynroute train` command "
            f"rewrites {folder} from it; or copy {folder.name}/ again from where it came from"
        )
    return "copy the folder again from where it came from, or retrain"


def _load_training_checkpoint(path: Path) -> dict[str, Any]:
    """``checkpoint.pt`` (our own file: RNG states and plain values too), or one clear line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CorruptFileError(
            f"{path} is corrupt ({type(err).__name__}) and {path.parent} has no model/ export "
            f"to fall back on; delete {path.parent} and train again"
        ) from None


def _load_dynroute_folder(folder: Path, run_dir: Path | None = None) -> LoadedModel:
    """A DynMoE / adaptive ``save_pretrained`` folder, with what ``dynroute train`` put in it.

    Tokenizer, corpus settings, evaluation shapes and set come from the folder itself
    (older exports: from the run's ``run.json`` and its cached corpus).
    """
    hint = _rewrite_hint(folder)
    config = read_json(folder / "config.json", hint)
    cls = model_class(config.get("model_type"))
    try:
        model = cls.from_pretrained(folder)
    except UnknownNameError as err:  # saved with a plugin's router or expert kind
        raise UnknownNameError(
            f"{folder / 'config.json'} was saved with a name this process does not know (the "
            f"files are intact): {err}"
        ) from None
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        weights = next(iter(sorted(folder.glob("*.safetensors"))), folder / "model.safetensors")
        raise CorruptFileError(
            f"{weights} cannot be read ({type(err).__name__}: {str(err)[:120]}); {hint}"
        ) from None
    limit = int(model.config.max_seq_len)
    info = read_json(folder / RUN_INFO_FILE, hint) if (folder / RUN_INFO_FILE).is_file() else {}
    data: dict[str, Any] = {"source": "stdlib"}
    if (folder / DATA_FILE).is_file():
        data = read_json(folder / DATA_FILE, hint)
    run: dict[str, Any] = {}
    if run_dir is not None and not info:  # an export older than dynroute_run.json
        run = read_json(run_dir / "run.json", "delete it and rerun `dynroute train` to resume")
        data = run["data"]
    train = info or run.get("train", {})
    if train:
        seq_len, batch_size = int(train["seq_len"]), int(train["batch_size"])
    elif (folder / DATA_FILE).is_file():  # 128-token windows, as `dynroute eval` always used
        seq_len, batch_size = min(128, limit), 16
    else:
        seq_len, batch_size = min(256, limit), 16
    tok_files = [d / "tokenizer.json" for d in (folder, folder.parent)]
    tokenizer, prepared = None, None
    if any(f.is_file() for f in tok_files):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(next(f for f in tok_files if f.is_file())))
    else:
        if not (folder / DATA_FILE).is_file() and not run:
            data["vocab_size"] = int(model.config.vocab_size)
        prepared = prepare_run_data(data)
        tokenizer = prepared.tokenizer
    windows = None
    if (folder / EVAL_WINDOWS_FILE).is_file():
        try:
            windows = np.load(folder / EVAL_WINDOWS_FILE)
        except (ValueError, OSError, EOFError) as err:
            raise CorruptFileError(
                f"{folder / EVAL_WINDOWS_FILE} is corrupt ({err}); {hint}"
            ) from None
    kind = "dynroute-run" if run_dir is not None else "dynmoe-model"
    return LoadedModel(
        model.eval(), folder, tokenizer, kind, data, prepared, seq_len, batch_size,
        windows=windows, eval_batches=train.get("eval_batches"), step=info.get("step"),
    )  # fmt: skip


def _load_hf(folder: Path, config: dict[str, Any]) -> LoadedModel:
    """A transformers MoE checkpoint with its saved dynroute routing and its own tokenizer."""
    from dynroute import hf

    if not hf.is_hf_moe_checkpoint(folder):
        raise ValueError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}; dynroute reads "
            "its own models (model_type 'dynmoe': pass the --out folder of `dynroute train` or "
            "its model/ folder) and transformers MoE checkpoints of the families dynroute.hf "
            f"supports ({hf.supported_families_text()})"
        )
    model = hf.load_patched(folder)
    seq_len = min(256, int(getattr(model.config, "max_position_embeddings", 256)))
    tokenizer = hf.load_tokenizer(folder)
    return LoadedModel(
        model.eval(), folder, tokenizer, "hf-moe", {"source": "stdlib"}, None, seq_len, 4
    )


def router_text(model: nn.Module) -> str | None:
    """``top_p(p=0.4)``-style description of a model's routing (None if unknown).

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> router_text(DynMoEForCausalLM(DynMoEConfig(vocab_size=16, d_model=16, n_layers=1,
        ...     n_heads=2, d_ff=16, num_experts=4, router="top_p", p=0.3)))
        'top_p(p=0.3)'
    """
    cfg = getattr(model, "config", None)
    router = getattr(cfg, "router", None)
    if router is not None and hasattr(cfg, "router_spec"):
        return cfg.router_spec().describe()
    # dynroute.hf blocks carry a RouterSpec with describe(); layers may differ.
    specs = {m.spec.describe() for m in model.modules() if hasattr(m, "routing_callback")}
    return ", ".join(sorted(specs)) or None
