"""Ctrl-C during training: finish the step, write a checkpoint, stop with a clear message.

The command installs :func:`stop_on_sigint`; the training loop calls :func:`steps_started`
before its first step, asks :func:`stop_requested` after every step and, when asked to
stop, checkpoints and raises :class:`TrainingInterrupted`. Before the steps start
(tokenizing, building the model) Ctrl-C is a plain ``KeyboardInterrupt``: there is
nothing to save yet, and waiting for a first step could take minutes. Called from
Python without :func:`stop_on_sigint`, the loop never stops on its own (Ctrl-C is a plain
``KeyboardInterrupt``; the last checkpoint stays intact, as checkpoints are atomic).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["TrainingInterrupted", "steps_started", "stop_on_sigint", "stop_requested"]

_requested = threading.Event()
_stepping = threading.Event()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after writing a checkpoint at ``step``.

    A ``KeyboardInterrupt``, so code that handles Ctrl-C handles this one too; its message
    says how to resume."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted at step {step}; rerun the same command to resume")
        self.step = step


def steps_started() -> None:
    """Called by the loop before its first step: from now on Ctrl-C waits for the step."""
    _stepping.set()


def stop_requested() -> bool:
    """True once Ctrl-C was pressed inside :func:`stop_on_sigint`.

    Example:
        >>> stop_requested()
        False
    """
    return _requested.is_set()


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[None]:
    """The first Ctrl-C asks the loop to stop after its step; a second one interrupts at once.

    Only the main thread can catch signals; elsewhere this does nothing.

    Example:
        >>> with stop_on_sigint():
        ...     stop_requested()
        False
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    _stepping.clear()

    def handle(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is a real interrupt
        if not _stepping.is_set():
            raise KeyboardInterrupt
        _requested.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
        _stepping.clear()
