"""Interleaved timing: every implementation runs once per round, so machine noise hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Samples:
    """Timings of one implementation: wall clock and process CPU time, per run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class Bench:
    """One implementation to time: ``run`` is timed, ``reset`` (untimed) runs before each call."""

    run: Callable[[], object]
    reset: Callable[[], object] = lambda: None


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    benches: dict[str, Bench],
    repeats: int,
    budget_s: float = 60.0,
    device: torch.device | str | None = None,
    on_step: Callable[[], object] | None = None,
    flush_bytes: int = 0,
) -> dict[str, Samples]:
    """Median-ready timings of each bench, run in interleaved rounds after one warm-up call.

    A bench whose warm-up call is slow gets fewer repeats (at least one) so that it
    spends about ``budget_s`` in total; the warm-up call itself is never counted.

    Args:
        benches: name -> Bench.
        repeats: rounds for a fast bench.
        budget_s: seconds a slow bench may take over all its rounds.
        device: on a CUDA device each call is timed with CUDA events (after a synchronize).
        on_step: called after each timed call (progress bars).
        flush_bytes: before each call, write a buffer this large so that no call finds
            the weights the previous one read still in cache (a real model's other
            layers would have evicted them).

    Example:
        >>> s = time_interleaved({"a": Bench(lambda: None), "b": Bench(lambda: None)}, 3)
        >>> sorted(s), len(s["a"].wall)
        (['a', 'b'], 3)
    """
    flush = torch.zeros(flush_bytes // 4, device=device) if flush_bytes else None
    rounds: dict[str, int] = {}
    for name, bench in benches.items():
        bench.reset()
        _sync(device)
        start = time.perf_counter()
        bench.run()
        _sync(device)
        warm = time.perf_counter() - start
        rounds[name] = max(1, min(repeats, int(budget_s / max(warm, 1e-9))))
    samples = {name: Samples() for name in benches}
    cuda = device is not None and torch.device(device).type == "cuda"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else []
    for i in range(repeats):
        for name, bench in benches.items():
            if i >= rounds[name]:
                continue
            bench.reset()
            if flush is not None:
                flush.add_(1.0)
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            if cuda:  # CUDA events: the GPU's own clock, no host-side launch jitter
                events[0].record()
                bench.run()
                events[1].record()
                events[1].synchronize()
                samples[name].wall.append(events[0].elapsed_time(events[1]) / 1e3)
            else:
                bench.run()
                samples[name].wall.append(time.perf_counter() - wall)
            samples[name].cpu.append(time.process_time() - cpu)
            if on_step is not None:
                on_step()
    return samples
