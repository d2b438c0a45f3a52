"""Perplexity, experts per token and speed of an adapted model on some text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.evaluation import EvalResult, evaluate_lm
from dynroute.hf.apply import (
    adapted_blocks,
    apply_routing,
    remove_routing,
    reset_routing_stats,
    routing_config,
    routing_stats,
)
from dynroute.hf.io import load_patched, load_tokenizer

__all__ = [
    "TextInput",
    "as_token_ids",
    "evaluate_ids",
    "evaluate_text",
    "measured",
    "token_windows",
    "window_batches",
]

TextInput = str | Sequence[str] | Tensor
"""Text, texts (with a tokenizer) or token ids: what the evaluation functions accept."""


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


def token_windows(ids: Tensor, seq_len: int, max_tokens: int | None = None) -> list[Tensor]:
    """Cut ids [T] into non-overlapping windows of ``seq_len`` (the last may be shorter;
    a window of fewer than 2 tokens predicts nothing and is dropped).

    Args:
        ids: token ids [T].
        seq_len: window length.
        max_tokens: use at most the first this many ids (None: all).

    Raises:
        ValueError: fewer than 2 tokens to evaluate.

    Example:
        >>> [w.tolist() for w in token_windows(torch.arange(7), 3)]
        [[0, 1, 2], [3, 4, 5]]
    """
    if max_tokens is not None:
        ids = ids[:max_tokens]
    wins = [w for w in ids.split(seq_len) if w.numel() >= 2]
    if not wins:
        raise ValueError(f"need at least 2 tokens to evaluate, got {ids.numel()}")
    return wins


def window_batches(wins: list[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Stack consecutive windows into batches [b, seq_len] of at most ``batch_size``.

    Full windows share a length and batch together; a shorter last window runs alone.

    Example:
        >>> [b.shape[0] for b in window_batches(token_windows(torch.arange(11), 3), 2)]
        [2, 1, 1]
    """
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
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexity and routing statistics of a causal LM on token ids [T].

    The ids are cut into non-overlapping windows of ``seq_len``; every token but the
    first of each window is predicted. Counters of experts per token are reset first.

    Returns:
        dict with ``perplexity``, ``loss`` (mean NLL, nats), ``tokens`` (predicted),
        ``mean_experts``, ``native_k``, ``expert_fraction``, ``mean_experts_per_layer``,
        ``tokens_per_s`` (forward only, first batch excluded when there are more),
        ``seconds`` (of those timed forwards), ``routing`` (settings or None), and
        the keys ``dynroute eval`` prints for its own models: ``val_loss``,
        ``mean_experts_per_token``, ``experts_per_layer`` (list), ``tokens_per_second``,
        ``eval_tokens``, ``router``, ``expert_param_ratio`` and ``activated_param_ratio``
        (routed-expert / all parameters used per token, relative to the model's own k).

    Example:
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> cfg = OlmoeConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=4, num_experts_per_tok=2)
        >>> out = evaluate_ids(OlmoeForCausalLM(cfg), torch.randint(0, 128, (40,)), seq_len=16)
        >>> out["tokens"], out["mean_experts"]
        (37, 2.0)
    """
    wins = token_windows(ids.reshape(-1), seq_len, max_tokens)
    with measured(model):
        reset_routing_stats(model)
        batches = _spaced(list(window_batches(wins, batch_size)), max_batches)
        # Each window scores itself: its logits but the last against its ids but the first.
        run = evaluate_lm(
            model,
            [(batch, batch[:, 1:]) for batch in batches],
            forward_kwargs={"use_cache": False},
            progress=progress and len(batches) > 1,
            total=len(batches),
        )
        routing = _routing_summary(model)
    return _eval_result(run, routing)


def _spaced(batches: list[Tensor], max_batches: int | None) -> list[Tensor]:
    """At most ``max_batches`` batches, evenly spaced over the text, as for dynroute runs;
    full batches first (a short last window would count as a whole batch)."""
    if max_batches is None or max_batches >= len(batches):
        return batches
    from dynroute.data.batches import eval_window_starts

    full = [b for b in batches if b.shape == batches[0].shape]
    pool = full if len(full) >= max_batches else batches
    return [pool[i] for i in eval_window_starts(len(pool), max_batches)]


def _routing_summary(model: nn.Module) -> dict[str, Any]:
    """Experts-per-token counters, routing settings and parameter ratios of an adapted model."""
    blocks = adapted_blocks(model)
    named = all(b.spec.serializable for b in blocks)
    routers = sorted({b.spec.describe() for b in blocks})
    expert_ratio, activated_ratio = _param_ratios(model)
    return {
        "stats": routing_stats(model),
        "settings": routing_config(model) if named else None,
        "router": routers[0] if len(routers) == 1 else "; ".join(routers),
        "expert_param_ratio": expert_ratio,
        "activated_param_ratio": activated_ratio,
    }


def _eval_result(run: EvalResult, routing: dict[str, Any]) -> dict[str, Any]:
    """The dict :func:`evaluate_ids` returns (its own keys, then ``dynroute eval``'s)."""
    stats = routing["stats"]
    mean_nll, predicted = run.loss, run.tokens
    per_layer = [v for _, v in sorted(stats["per_layer"].items(), key=lambda kv: str(kv[0]))]
    return {
        "perplexity": run.perplexity,
        "loss": mean_nll,
        "tokens": predicted,
        "mean_experts": stats["mean_experts"],
        "native_k": stats["native_k"],
        "expert_fraction": stats["expert_fraction"],
        "mean_experts_per_layer": {str(k): v for k, v in stats["per_layer"].items()},
        "tokens_per_s": run.tokens_per_second,
        "seconds": run.seconds,
        "routing": routing["settings"],
        # the same names as dynroute.train.evaluate, so `dynroute eval` prints either
        "val_loss": mean_nll,
        "mean_experts_per_token": stats["mean_experts"],
        "experts_per_layer": per_layer,
        "tokens_per_second": run.tokens_per_second,
        "eval_tokens": predicted,
        "router": routing["router"],
        "expert_param_ratio": routing["expert_param_ratio"],
        "activated_param_ratio": routing["activated_param_ratio"],
        "param_ratio_reference": f"its own top-{stats['native_k']:g}",  # what the ratios divide by
    }


def _param_ratios(model: nn.Module) -> tuple[float, float]:
    """Routed-expert and all parameters used per token, relative to the model's own k."""
    total = sum(p.numel() for p in model.parameters())
    routed_all = used = native = 0.0
    for block in adapted_blocks(model):
        per_expert = block.experts.gate_up_proj[0].numel() + block.experts.down_proj[0].numel()
        routed_all += block.num_experts * per_expert
        used += block.mean_experts() * per_expert
        native += block.native_k * per_expert
    if not native or used != used:  # no blocks, or no tokens seen (nan)
        return float("nan"), float("nan")
    rest = total - routed_all
    return used / native, (rest + used) / (rest + native)


def _read_texts(text_path: str | Path | None) -> tuple[list[str], str]:
    """A text file (whole), a folder or saved dataset (validation split), or None (stdlib)."""
    if text_path is None:
        from dynroute.hf.io import sample_texts

        return sample_texts(), "stdlib sample"
    path = Path(text_path)
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")], str(path)
    if path.is_dir():
        from dynroute.data import load_corpus

        return load_corpus(path, "validation"), f"{path} (validation split)"
    raise FileNotFoundError(f"evaluate_text: no text file or folder at {path}")


def evaluate_text(
    model_or_dir: nn.Module | str | Path,
    text_path: str | Path | None = None,
    *,
    tokenizer: Any = None,
    seq_len: int = 512,
    batch_size: int = 4,
    max_tokens: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    **from_pretrained_kwargs: Any,
) -> dict[str, Any]:
    """Perplexity on a text file, mean experts per token (overall, per layer) and tokens/s.

    Args:
        model_or_dir: a (possibly adapted) transformers model, or a local checkpoint folder
            (loaded with :func:`load_patched`, so its saved routing is used; a checkpoint
            never patched is measured with its own top-k routing).
        text_path: a UTF-8 text file (all of it is evaluated), a folder or saved
            ``datasets`` folder (its validation split, as ``dynroute.data.load_corpus``),
            or None for a few Python stdlib source files.
        tokenizer: defaults to the tokenizer in the checkpoint folder (or in the model's
            ``name_or_path`` folder); an error says so when none is there.
        seq_len, batch_size: evaluation windows (non-overlapping) and batch size.
        max_tokens, max_batches: evaluate at most this many tokens / batches (the batches
            evenly spaced over the text).
        progress: show a progress bar.
        **from_pretrained_kwargs: for loading a folder (e.g. ``dtype=torch.bfloat16``).

    Returns:
        The dict of :func:`evaluate_ids` plus ``model_type``, ``text`` and ``checkpoint``.
    """
    texts, label = _read_texts(text_path)
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
    ids = as_token_ids(texts, tokenizer)
    out = evaluate_ids(
        model,
        ids,
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        max_batches=max_batches,
        progress=progress,
    )
    out["model_type"] = getattr(model.config, "model_type", None)
    out["text"] = label
    out["checkpoint"] = source
    return out
