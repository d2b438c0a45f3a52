"""Perplexity, experts per token and speed of an adapted model on some text."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.hf.apply import (
    adapted_blocks,
    apply_routing,
    remove_routing,
    reset_routing_stats,
    routing_config,
    routing_stats,
)
from dynroute.hf.io import load_patched, load_tokenizer

__all__ = ["as_token_ids", "evaluate_ids", "evaluate_text", "measured"]

TextInput = str | Sequence[str] | Tensor


def as_token_ids(texts: TextInput, tokenizer: Any = None) -> Tensor:
    """Flatten text(s) or token ids into one LongTensor [T].

    Strings are encoded one by one (no special tokens) and joined with the tokenizer's
    EOS token when it has one; a tensor is flattened as is.

    Example:
        >>> as_token_ids(torch.tensor([[1, 2], [3, 4]])).tolist()
        [1, 2, 3, 4]
    """
    if isinstance(texts, Tensor):
        return texts.reshape(-1).long()
    if tokenizer is None:
        raise ValueError(
            "text needs a tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(MODEL_DIR) "
            "(or token ids as a LongTensor)"
        )
    docs = [texts] if isinstance(texts, str) else list(texts)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for doc in docs:
        if ids and eos is not None:
            ids.append(int(eos))
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    if len(ids) < 2:
        raise ValueError(f"the text encodes to {len(ids)} token(s); need at least 2")
    return torch.tensor(ids, dtype=torch.long)


def _windows(ids: Tensor, seq_len: int, max_tokens: int | None) -> list[Tensor]:
    if max_tokens is not None:
        ids = ids[:max_tokens]
    wins = [w for w in ids.split(seq_len) if w.numel() >= 2]
    if not wins:
        raise ValueError(f"need at least 2 tokens to evaluate, got {ids.numel()}")
    return wins


def _batches(wins: list[Tensor], batch_size: int) -> Iterator[Tensor]:
    # Full windows share a length and batch together; a shorter last window runs alone.
    i = 0
    while i < len(wins):
        batch = [wins[i]]
        i += 1
        while i < len(wins) and len(batch) < batch_size and wins[i].numel() == batch[0].numel():
            batch.append(wins[i])
            i += 1
        yield torch.stack(batch)


@contextmanager
def measured(model: nn.Module) -> Iterator[nn.Module]:
    """Make sure the model has adapted blocks while inside; undo it afterwards if added.

    An unadapted model gets ``"top_k"`` (its own routing) so experts per token can be
    counted; it is restored on exit.
    """
    added = not adapted_blocks(model)
    if added:
        apply_routing(model, "top_k")
    try:
        yield model
    finally:
        if added:
            remove_routing(model)


@torch.no_grad()
def evaluate_ids(
    model: nn.Module,
    ids: Tensor,
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexity and routing statistics of a causal LM on token ids [T].

    The ids are cut into non-overlapping windows of ``seq_len``; every token but the
    first of each window is predicted. Counters of experts per token are reset first.

    Returns:
        dict with ``perplexity``, ``loss`` (mean NLL, nats), ``tokens`` (predicted),
        ``mean_experts``, ``native_k``, ``expert_fraction``, ``mean_experts_per_layer``,
        ``tokens_per_s`` (forward only), ``seconds``.

    Example:
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> cfg = OlmoeConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=4, num_experts_per_tok=2)
        >>> out = evaluate_ids(OlmoeForCausalLM(cfg), torch.randint(0, 128, (40,)), seq_len=16)
        >>> out["tokens"], out["mean_experts"]
        (37, 2.0)
    """
    wins = _windows(ids.reshape(-1), seq_len, max_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, predicted, seconds = 0.0, 0, 0.0
    with measured(model):
        reset_routing_stats(model)
        batches = list(_batches(wins, batch_size))
        for batch in _progress(batches, progress, "evaluating"):
            batch = batch.to(device)
            start = time.perf_counter()
            logits = model(input_ids=batch, use_cache=False).logits
            seconds += time.perf_counter() - start
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"
            )
            nll += float(loss)
            predicted += batch[:, 1:].numel()
        stats = routing_stats(model)
        named = all(b.spec.serializable for b in adapted_blocks(model))
        settings = routing_config(model) if named else None
    model.train(was_training)
    tokens_in = sum(w.numel() for w in wins)
    mean_nll = nll / predicted
    return {
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else float("inf"),
        "loss": mean_nll,
        "tokens": predicted,
        "mean_experts": stats["mean_experts"],
        "native_k": stats["native_k"],
        "expert_fraction": stats["expert_fraction"],
        "mean_experts_per_layer": {str(k): v for k, v in stats["per_layer"].items()},
        "tokens_per_s": tokens_in / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "routing": settings,
    }


def _progress(items: list[Tensor], enabled: bool, label: str) -> Iterator[Tensor]:
    if not enabled or len(items) < 2:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)


def evaluate_text(
    model_or_dir: nn.Module | str | Path,
    text_path: str | Path,
    *,
    tokenizer: Any = None,
    seq_len: int = 512,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = True,
    **from_pretrained_kwargs: Any,
) -> dict[str, Any]:
    """Perplexity on a text file, mean experts per token (overall, per layer) and tokens/s.

    Args:
        model_or_dir: a (possibly adapted) transformers model, or a local checkpoint folder
            (loaded with :func:`load_patched`, so its saved routing is used; a checkpoint
            never patched is measured with its own top-k routing).
        text_path: a UTF-8 text file.
        tokenizer: defaults to the tokenizer in the checkpoint folder (or in the model's
            ``name_or_path`` folder); an error says so when none is there.
        seq_len, batch_size: evaluation windows (non-overlapping) and batch size.
        max_tokens: evaluate at most this many tokens of the file.
        progress: show a progress bar.
        **from_pretrained_kwargs: for loading a folder (e.g. ``dtype=torch.bfloat16``).

    Returns:
        The dict of :func:`evaluate_ids` plus ``model_type`` and ``text``.
    """
    text_path = Path(text_path)
    if not text_path.is_file():
        raise FileNotFoundError(f"evaluate_text: no text file at {text_path}")
    if isinstance(model_or_dir, nn.Module):
        model = model_or_dir
        source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    else:
        source = str(model_or_dir)
        model = load_patched(model_or_dir, **from_pretrained_kwargs)
    if tokenizer is None:
        if not source or not Path(source).is_dir():
            raise ValueError("evaluate_text: pass tokenizer= (the model has no local folder)")
        tokenizer = load_tokenizer(source)
    ids = as_token_ids(text_path.read_text(encoding="utf-8", errors="replace"), tokenizer)
    out = evaluate_ids(
        model, ids, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, progress=progress
    )
    out["model_type"] = getattr(model.config, "model_type", None)
    out["text"] = str(text_path)
    return out
