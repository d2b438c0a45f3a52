"""Generation with micro-batching: concurrent requests run as one ``model.generate`` call.

Jobs arrive from the event loop (:meth:`GenerationEngine.submit`, thread-safe) and run on
one worker thread, one batch at a time: an idle worker waits ``wait_ms`` after the first
job for others; the jobs queued while a batch runs form the next one. A batch shares its
sampling settings (temperature, top_p); a model that ignores ``attention_mask`` (adaptive
models) batches only prompts of equal length, others are left-padded. A stopping
criterion sees every step, so each row stops on its own (``max_tokens``, stop strings, a
client gone: its job's ``cancelled`` set, the row stops at the next step and frees its
slot; a cancelled job still queued never runs) and streams its text as it grows
(:func:`dynroute.serve.stops.visible_text`).
A batch that fails runs again one job at a time, so one bad job fails alone (its
traceback goes to the log; its future gets the error).

Example:
    >>> import torch
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> from dynroute.data.tokenizer import as_hf_tokenizer, train_tokenizer
    >>> tok = as_hf_tokenizer(train_tokenizer(["def f(x): return x"] * 20, vocab_size=270))
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=270, d_model=16, n_layers=1,
    ...     n_heads=2, d_ff=16, num_experts=4)).eval()
    >>> with GenerationEngine(model, tok, pad_batching=False) as engine:
    ...     done = engine.submit(Job(tok("def").input_ids, max_tokens=3)).result(timeout=60)
    >>> done.completion_tokens <= 3, done.finish_reason in ("stop", "length")
    (True, True)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from dynroute.serve.stops import visible_text

__all__ = ["GREEDY_BELOW", "Completion", "GenerationEngine", "Job"]

log = logging.getLogger(__name__)

#: temperatures under this are greedy: dividing logits by less overflows float32 to
#: inf/nan ("probability tensor contains inf/nan"), and sampling is argmax there anyway
GREEDY_BELOW = 1e-5


@dataclass
class Completion:
    """The answer to one :class:`Job`."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass
class Job:
    """One prompt to complete.

    Args:
        prompt_ids: token ids ``[T]``.
        max_tokens: most tokens to generate.
        temperature: 0 (or under :data:`GREEDY_BELOW`) = greedy; else sampling with ``top_p``.
        stops: stop strings (the text ends before the first one).
        on_text: called on the worker thread with each new piece of visible text.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stops: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[Completion] = field(default_factory=Future)

    def sampling(self) -> tuple[float, float]:
        """``(temperature, top_p)`` of the batch this job may join (greedy: ``(0, 1)``).

        Example:
            >>> Job([1], 1, temperature=1e-40).sampling(), Job([1], 1, 0.7, 0.9).sampling()
            ((0.0, 1.0), (0.7, 0.9))
        """
        if self.temperature < GREEDY_BELOW:
            return (0.0, 1.0)
        return (self.temperature, self.top_p)


@dataclass
class _Row:
    """One job's state inside a running batch."""

    job: Job
    ids: list[int] = field(default_factory=list)
    shown: str = ""
    finish: str | None = None


class _BatchCriterion(StoppingCriteria):
    """Sees each new token of every row; stops rows one by one (``[B]`` bool)."""

    def __init__(self, rows: list[_Row], decode: Callable[[list[int]], str], eos: set[int]):
        self.rows, self.decode, self.eos = rows, decode, eos

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if row.finish is not None:
                continue
            row.ids.append(token)
            job = row.job
            if token in self.eos:
                row.finish = "stop"
                row.ids.pop()  # counted below, never shown
                self.show(row, final=True)
                row.ids.append(token)
                continue
            hit = self.show(row, final=False)
            if hit:
                row.finish = "stop"
            elif len(row.ids) >= job.max_tokens:
                row.finish = "length"
                self.show(row, final=True)
            elif job.cancelled.is_set():
                row.finish = "cancelled"
        return torch.tensor([r.finish is not None for r in self.rows], device=input_ids.device)

    def show(self, row: _Row, final: bool) -> bool:
        text, hit = visible_text(self.decode(row.ids), row.job.stops, final or False)
        if text.startswith(row.shown) and len(text) > len(row.shown):
            if row.job.on_text is not None:
                row.job.on_text(text[len(row.shown) :])
            row.shown = text
        return hit


class GenerationEngine:
    """Runs :class:`Job` s in micro-batches on one worker thread (see the module doc).

    Args:
        model: a causal LM with ``generate`` (eval mode, on its device).
        tokenizer: a transformers tokenizer (``decode``, ``eos_token_id``).
        pad_batching: the model honours ``attention_mask`` (left padding is safe);
            else only prompts of equal length share a batch.
        max_batch: most jobs per ``generate`` call (1 turns batching off).
        wait_ms: how long an idle engine waits for more jobs after the first.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        pad_batching: bool,
        max_batch: int = 8,
        wait_ms: float = 5.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.pad_batching, self.max_batch, self.wait_s = pad_batching, max_batch, wait_ms / 1e3
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad_id = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else min(self.eos, default=0)
        )
        #: generate calls, requests they served, largest batch, jobs stopped or dropped
        #: because they were cancelled (``/health`` shows them)
        self.stats = {"generate_calls": 0, "requests": 0, "largest_batch": 0, "cancelled": 0}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dynroute-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[Completion]:
        """Queue ``job``; its future resolves to a :class:`Completion` (or the error)."""
        if not job.prompt_ids:
            raise ValueError("empty prompt: give at least one token")
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish the running batch and stop the worker (queued jobs are cancelled)."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, job: Job) -> tuple[Any, ...]:
        return (None if self.pad_batching else len(job.prompt_ids), *job.sampling())

    def _run(self) -> None:
        pending: list[Job] = []
        closing = False
        while not (closing and not pending):
            if not pending:
                first = self._queue.get()
                if first is None:
                    break
                pending.append(first)
                deadline = time.monotonic() + self.wait_s
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        job = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                    if job is None:
                        closing = True
                        break
                    pending.append(job)
            while True:  # whatever arrived while the last batch ran
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                else:
                    pending.append(job)
            kept = [j for j in pending if not _drop_cancelled(j)]
            self.stats["cancelled"] += len(pending) - len(kept)
            pending = kept
            if not pending:
                continue
            key = self._key(pending[0])
            batch = [j for j in pending if self._key(j) == key][: self.max_batch]
            taken = {id(j) for j in batch}
            pending = [j for j in pending if id(j) not in taken]
            self._generate(batch)
        for job in pending:
            job.future.cancel()

    def _generate(self, batch: list[Job]) -> None:
        """Run ``batch``; if it fails, run again alone each job that has shown no text yet
        (the one at fault fails alone; a job that streamed text cannot start over)."""
        rows = [_Row(j) for j in batch]
        try:
            self._generate_rows(rows)
        except Exception as err:
            if len(batch) == 1:
                log.error("generation failed for one request", exc_info=err)
            else:
                log.warning("a batch of %d failed; running its jobs one by one", len(batch))
            for row in rows:
                if row.job.future.done():
                    continue
                if len(batch) > 1 and not row.shown:
                    self._generate([row.job])
                else:
                    row.job.future.set_exception(err)

    def _generate_rows(self, rows: list[_Row]) -> None:
        batch = [r.job for r in rows]
        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, j in enumerate(batch):  # left padding: every prompt ends at the same column
            ids[i, width - len(j.prompt_ids) :] = torch.tensor(j.prompt_ids)
            mask[i, width - len(j.prompt_ids) :] = 1
        device = next(self.model.parameters()).device
        temperature, top_p = batch[0].sampling()
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if temperature == 0
            else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        )
        criterion = _BatchCriterion(
            rows, lambda t: self.tokenizer.decode(t, skip_special_tokens=False), self.eos
        )
        self.stats["generate_calls"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        # A model without padding support gets equal-length rows and no mask (its
        # generate() refuses an argument its forward does not take).
        masked = {"attention_mask": mask.to(device)} if self.pad_batching else {}
        with torch.inference_mode():
            self.model.generate(
                ids.to(device),
                **masked,
                max_new_tokens=max(j.max_tokens for j in batch),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos) or None,
                stopping_criteria=StoppingCriteriaList([criterion]),
                **sampling,
            )
        self.stats["cancelled"] += sum(row.finish == "cancelled" for row in rows)
        for row in rows:
            if row.finish is None:  # generate stopped on its own (max_new_tokens)
                row.finish = "length"
                criterion.show(row, final=True)
            row.job.future.set_result(
                Completion(
                    row.shown,
                    len(row.job.prompt_ids),
                    len(row.ids),
                    "stop" if row.finish == "cancelled" else row.finish,
                )
            )


def _drop_cancelled(job: Job) -> bool:
    if job.cancelled.is_set():
        job.future.cancel()
        return True
    return False
