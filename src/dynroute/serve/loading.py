"""A model ready to serve: weights, a transformers tokenizer, its context and chat prompt.

Loads every folder ``dynroute eval`` reads (:func:`dynroute.checkpoints.load_model`).
Chat prompts use the tokenizer's chat template when it has one; else
:func:`chat_prompt_text`, with ``"\\nuser:"`` as an extra stop string so the model does
not write the user's next turn.

Example:
    >>> chat_prompt_text([{"role": "system", "content": "Be brief."},
    ...                   {"role": "user", "content": "Hi"}])
    'system: Be brief.\\nuser: Hi\\nassistant:'
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_CHAT_STOP", "ServedModel", "chat_prompt_text", "load_served_model"]

DEFAULT_CHAT_STOP = "\nuser:"


def chat_prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """One ``role: content`` line per message of ``[{"role", "content"}]``, then ``assistant:``."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


@dataclass
class ServedModel:
    """A loaded model with what the server needs to know about it.

    Attributes:
        model: causal LM in eval mode; tokenizer: a transformers tokenizer.
        name: the id clients put in ``model``; folder: where the weights are.
        context_length: longest prompt + completion in tokens.
        pad_batching: whether the model honours ``attention_mask`` (left padding).

    ``encode`` and ``chat_ids`` may run on several threads at once (the server tokenizes
    off its event loop): one lock keeps a tokenizer's settings from changing mid-call.
    """

    model: Any
    tokenizer: Any
    name: str
    folder: Path
    context_length: int
    pad_batching: bool
    encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @cached_property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold are ``0 .. vocab_size - 1`` (the embedding's rows)."""
        embeddings = self.model.get_input_embeddings()
        return int(embeddings.num_embeddings if embeddings is not None else len(self.tokenizer))

    @cached_property
    def max_prompt_chars(self) -> int:
        """Characters beyond which a text cannot fit the context: every token covers at
        most as many characters as its longest vocabulary entry has (checked before a
        text is tokenized, so a huge prompt is refused without tokenizing it)."""
        longest = max(map(len, self.tokenizer.get_vocab()), default=1)
        return self.context_length * max(longest, 1)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        with self.encode_lock:
            return list(self.tokenizer(text)["input_ids"])

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat prompt ending where the assistant's answer starts."""
        if self.has_chat_template:
            with self.encode_lock:
                text = self.tokenizer.apply_chat_template(
                    list(messages), tokenize=False, add_generation_prompt=True
                )
                return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.encode(chat_prompt_text(messages))

    def chat_stops(self) -> list[str]:
        return [] if self.has_chat_template else [DEFAULT_CHAT_STOP]


def load_served_model(
    path: str | Path, name: str | None = None, device: str = "cpu"
) -> ServedModel:
    """Load ``path`` for serving (``name`` defaults to the folder's name).

    Raises:
        FileNotFoundError, ValueError: from :func:`dynroute.checkpoints.load_model`, saying
            what was found and what to pass instead.
    """
    from tokenizers import Tokenizer

    from dynroute.checkpoints import is_own_model_type, load_model
    from dynroute.data.tokenizer import as_hf_tokenizer

    loaded = load_model(path)
    tokenizer = loaded.tokenizer
    if isinstance(tokenizer, Tokenizer):
        tokenizer = as_hf_tokenizer(tokenizer)
    elif tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = loaded.model.to(torch.device(device)).eval()
    config = model.config
    context = int(
        getattr(config, "max_seq_len", None) or getattr(config, "max_position_embeddings", 2048)
    )
    # DynMoE models say whether left padding is exact (not with Graph of Tokens); other
    # models of ours (adaptive) ignore attention_mask: equal-length batches for those.
    own = is_own_model_type(getattr(config, "model_type", None))
    padding = bool(getattr(model, "supports_left_padding", not own))
    root = Path(path)
    default_name = (root.parent if root.name == "model" else root).resolve().name
    return ServedModel(model, tokenizer, name or default_name, loaded.folder, context, padding)
