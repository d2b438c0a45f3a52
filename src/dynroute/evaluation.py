"""The one evaluation loop: any causal LM over batches of token windows.

``dynroute eval`` (``train.evaluate``, ``hf.evaluate``) and ``dynroute analyze``
(``analysis.run``) all run :func:`evaluate_lm`; they differ only in how they cut the
windows and what they do per batch (add experts per token, feed a routing recorder).
It needs nothing of dynroute's models: the model maps ids ``[B, T]`` to logits.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["EvalResult", "evaluate_lm", "logits_of", "token_losses"]


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Tensor [B, T]: per-token cross-entropy (nats) of next-token logits [B, T, V].

    Example:
        >>> token_losses(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])).tolist()
        [[1.3862943649291992, 1.3862943649291992]]
    """
    b, t, v = logits.shape
    loss = F.cross_entropy(
        logits.float().reshape(b * t, v), targets.reshape(b * t), reduction="none"
    )
    return loss.view(b, t)


def logits_of(output: Any) -> Tensor:
    """The logits of a model output: a tensor, ``.logits``, or the first tuple item.

    Example:
        >>> logits_of((torch.zeros(1, 2, 3),)).shape
        torch.Size([1, 2, 3])
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "the model should return logits [B, T, V] or an object with .logits"
    )


@dataclass
class EvalResult:
    """What :func:`evaluate_lm` measured.

    Attributes:
        loss_sum: summed per-token cross-entropy (nats); tokens: tokens scored.
        timings: ``(input tokens, seconds)`` of each forward pass.
        completed: False when Ctrl-C stopped the loop early.
    """

    loss_sum: float = 0.0
    tokens: int = 0
    timings: list[tuple[int, float]] = field(default_factory=list)
    completed: bool = True

    @property
    def loss(self) -> float:
        """Mean cross-entropy per scored token (nats)."""
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        """``exp(loss)`` (inf beyond what a float holds)."""
        return math.exp(self.loss) if self.loss < 700 else float("inf")

    @property
    def seconds(self) -> float:
        """Seconds of the timed forward passes (the first left out when there are more)."""
        return sum(s for _, s in self._timed())

    @property
    def tokens_per_second(self) -> float:
        """Input tokens per second of forward pass, the first (warm-up) pass left out."""
        seconds = self.seconds
        return sum(n for n, _ in self._timed()) / seconds if seconds > 0 else float("nan")

    def _timed(self) -> list[tuple[int, float]]:
        # The first call pays one-off setup (allocations, lazy init): leave it out.
        return self.timings[1:] if len(self.timings) > 1 else self.timings


class _StopAfterBatch:
    """First Ctrl-C: finish the current batch, then stop; a second one interrupts at once.

    Stopping between batches keeps per-batch statistics consistent (a batch is either
    counted everywhere or nowhere). Only the main thread can catch signals; elsewhere
    this does nothing.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.requested = enabled, False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C is a real interrupt

    def __enter__(self) -> _StopAfterBatch:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    before_batch: Callable[[Tensor], None] | None = None,
    after_batch: Callable[[Any, Tensor], None] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    total: int | None = None,
    label: str = "evaluating",
    interruptible: bool = False,
) -> EvalResult:
    """Run a causal LM over ``(inputs [B, T], targets [B, T'])`` batches; score its logits.

    The logits of the first ``T'`` positions are scored against ``targets`` (``T' = T``
    for windows of ``T + 1`` ids split into inputs and shifted targets; ``T' = T - 1``
    to score a window of ``T`` ids against itself). Batches go to the device of the
    model's first parameter; the model is in eval mode inside and restored after.

    Args:
        model: ``model(inputs, **forward_kwargs)`` returns logits ``[B, T, V]`` (or an
            output with ``.logits``): a ``DynMoEForCausalLM``, a transformers model, ...
        batches: ``(inputs, targets)`` LongTensors, e.g. ``dynroute.data.iter_eval_batches``.
        before_batch: called with ``inputs`` before each forward (e.g. a recorder's
            ``begin_batch``); after_batch: called with the model output and the
            per-token losses ``[B, T']`` after it.
        forward_kwargs: extra arguments of every forward (e.g. ``use_cache=False``).
        progress, total, label: a progress bar of ``total`` batches.
        interruptible: the first Ctrl-C stops after the current batch
            (``completed=False``) instead of raising.

    Returns:
        EvalResult.

    Example:
        >>> model = nn.Embedding(8, 8).requires_grad_(False)   # logits = embeddings
        >>> _ = model.weight.zero_()                            # uniform: loss = log 8
        >>> ids = torch.arange(16).view(2, 8) % 8
        >>> r = evaluate_lm(model, [(ids[:, :-1], ids[:, 1:])])
        >>> r.tokens, round(r.loss, 4), round(r.perplexity, 4)
        (14, 2.0794, 8.0)
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    device = next((p.device for p in model.parameters()), None)
    kwargs = forward_kwargs or {}
    result = EvalResult()
    was_training = model.training
    model.eval()
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    bar = Progress(*columns, TimeRemainingColumn(), disable=not progress, transient=True)
    try:
        with bar, _StopAfterBatch(interruptible) as stop:
            task = bar.add_task(label, total=total)
            for x, y in batches:
                if device is not None:
                    x, y = x.to(device), y.to(device)
                if before_batch is not None:
                    before_batch(x)
                start = time.perf_counter()
                output = model(x, **kwargs)
                logits = logits_of(output)
                if logits.is_cuda:  # count the kernels, not just their launch
                    torch.cuda.synchronize(logits.device)
                result.timings.append((x.numel(), time.perf_counter() - start))
                losses = token_losses(logits[:, : y.shape[1]], y)
                result.loss_sum += float(losses.double().sum())
                result.tokens += y.numel()
                if after_batch is not None:
                    after_batch(output, losses)
                bar.advance(task)
                if stop.requested:
                    result.completed = False
                    break
    finally:
        model.train(was_training)
    return result
