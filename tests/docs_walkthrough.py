"""Walk a doc as a newcomer does: every shell block, in order, in a fresh folder.

A doc's ```` ```bash ````, ```` ```sh ```` and ```` ```console ```` blocks run one after
the other, each in ``bash -e -o pipefail``, in one temporary folder per doc that holds
what a reader of a source checkout has beside them: ``configs/`` and ``benchmarks/``
(copies of the repository's), and their own text (``my_text.txt``, ``my_eval.txt``,
``my_texts/``). ``dynroute`` and ``python`` are this interpreter's, and
``DYNROUTE_MAX_STEPS`` (documented in docs/training.md) keeps every training run short.

A block that must not run says why in an HTML comment right above its fence, which the
reader of the rendered page does not see:

    <!-- walkthrough: skip — needs a GPU -->
    <!-- walkthrough: fails — shows the error of a wrong flag -->
    <!-- walkthrough: file my_routers.py -->

``fails``: the block must exit non-zero, without a traceback. ``file``: a code block the
reader saves under that name (the walk writes it, in order). A line ending in ``&``
starts a server: the walk waits until each ``--port`` of such lines answers, and stops
every process a block left behind when the doc is done. The ports a doc names are mapped
to free ones (the same number everywhere in that doc), so walks beside other servers work.

Example:
    >>> [(b.mode, b.reason) for b in walk_blocks_of_text("x.md", FENCED)]
    [('file', 'hello.py'), ('run', ''), ('skip', 'needs a GPU')]
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynroute.common.net import free_port

__all__ = ["Block", "Outcome", "Walk", "walk_blocks", "walk_blocks_of_text"]

REPO = Path(__file__).resolve().parents[1]
#: Optimizer steps of every training run in a walk (``DYNROUTE_MAX_STEPS``).
WALK_MAX_STEPS = 3
#: What a walk's folder holds copies of: what a reader of a source checkout has beside them.
CHECKOUT_FOLDERS = ("configs", "benchmarks")
TRACEBACK = "Traceback (most recent call last)"

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_SHELLS = ("bash", "sh", "console")
_MARKER = re.compile(r"<!--\s*walkthrough:\s*(\w+)\s*[—–:-]?\s*(.*?)\s*-->\s*$")
_MODES = ("skip", "fails", "file")
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")
_SERVER_ERROR = re.compile(r"^HTTP/[\d.]+ 5\d\d", re.M)  # curl -i of a failing server
_PORT = re.compile(r"--port[ =](\d{2,5})\b")
FENCED = """
<!-- walkthrough: file hello.py -->
```python
print("hello")
```
```bash
echo one
```
<!-- walkthrough: skip — needs a GPU -->
```sh
nvidia-smi
```
"""


@dataclass(frozen=True)
class Block:
    """One block of a walk: ``number`` counts the doc's walk blocks from 1; ``line`` is the
    fence's line; ``mode`` is ``run``, ``skip``, ``fails`` or ``file``; ``reason`` the
    marker's text (for ``file``: the file name)."""

    doc: str
    number: int
    line: int
    code: str
    mode: str = "run"
    reason: str = ""

    def where(self) -> str:
        return f"{self.doc} block {self.number} (line {self.line})"


def walk_blocks_of_text(doc: str, text: str) -> list[Block]:
    """The blocks a walk runs or writes, in order, with their walkthrough markers.

    Shell blocks (``run``, ``skip`` or ``fails``), and the code blocks a marker
    ``<!-- walkthrough: file NAME -->`` names: the reader saves them as ``NAME``.
    """
    blocks: list[Block] = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        lang, code = match.group(1), match.group(2)
        marker = _MARKER.search(above)
        mode, reason = (marker.group(1), marker.group(2)) if marker else ("run", "")
        if marker and (mode not in _MODES or not reason):
            raise ValueError(
                f"{doc} line {line - 1}: write <!-- walkthrough: skip — why -->, "
                f"<!-- walkthrough: fails — why --> or <!-- walkthrough: file NAME -->, "
                f"got {above.strip()!r}"
            )
        if lang not in _SHELLS and mode != "file":
            continue
        if lang == "console":  # the commands are the lines after a prompt
            code = "".join(ln[2:] + "\n" for ln in code.splitlines() if ln.startswith("$ "))
        blocks.append(Block(doc, len(blocks) + 1, line, code, mode, reason))
    return blocks


def walk_blocks(path: Path) -> list[Block]:
    """The walk's blocks of a markdown file (``doc`` is its path relative to the repo)."""
    return walk_blocks_of_text(path.relative_to(REPO).as_posix(), path.read_text())


@dataclass
class Outcome:
    """What one block did: exit code, wall and CPU seconds (the CPU time of the processes
    it waited for: comparable on a busy machine), and its output (a file under the walk)."""

    block: Block
    returncode: int | None  # None: skipped
    seconds: float
    log: Path | None = None
    cpu_seconds: float = 0.0
    failure: str | None = None  # found by the walk itself (a server that never answered)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def problem(self) -> str | None:
        """Why this block failed the walk, or None."""
        if self.returncode is None:
            return None
        if self.failure:
            return self.failure
        out = self.output()
        if TRACEBACK in out:
            return "printed a traceback"
        if self.returncode in (124, -signal.SIGKILL):
            return "ran past its timeout"
        if _SERVER_ERROR.search(out):
            return "got an HTTP 5xx answer"
        if self.block.mode == "fails" and self.returncode == 0:
            return "was marked 'fails' but exited 0"
        if self.block.mode == "run" and self.returncode != 0:
            return f"exited {self.returncode}"
        return None

    def report(self, tail: int = 3000) -> str:
        return (
            f"{self.block.where()} {self.problem()}:\n$ {self.block.code.strip()}\n"
            f"--- output (last {tail} characters) ---\n{self.output()[-tail:]}"
        )


@dataclass
class Walk:
    """A fresh folder and the processes a doc's blocks start there (a context manager)."""

    root: Path
    timeout_s: float = 600.0  # a block; the demo takes a minute on a quiet box, 3 on a busy one
    server_start_s: float = 120.0
    ports: dict[int, int] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.root / "work"

    def __enter__(self) -> Walk:
        self.folder.mkdir(parents=True)
        (self.root / "logs").mkdir()
        for name in CHECKOUT_FOLDERS:  # copies: benchmarks write their results there
            shutil.copytree(REPO / name, self.folder / name, ignore=_CACHES)
        _write_reader_text(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["DYNROUTE_MAX_STEPS"] = str(WALK_MAX_STEPS)
        env["PET_MASTER_PORT"] = str(free_port())  # a bare torchrun's rendezvous port
        return env

    def code_of(self, block: Block) -> str:
        """The block's code with the ports it names mapped to free ones (kept per doc).

        Example:
            >>> walk = Walk(Path("unused"), ports={8001: 40001})
            >>> walk.code_of(Block("x.md", 1, 1, "serve --port 8001 & curl 127.0.0.1:8001/"))
            'serve --port 40001 & curl 127.0.0.1:40001/'
        """
        for number in _PORT.findall(block.code):
            self.ports.setdefault(int(number), free_port())
        code = block.code
        for old, new in self.ports.items():
            code = re.sub(rf"(?<=--port[ =]){old}\b|(?<=:){old}\b", str(new), code)
        return code

    def run(self, block: Block) -> Outcome:
        """Run one block (or record it skipped); wait for the servers it starts."""
        if block.mode == "skip":
            return Outcome(block, None, 0.0)
        if block.mode == "file":
            (self.folder / block.reason).write_text(block.code)
            return Outcome(block, 0, 0.0)
        code = self.code_of(block)
        log = self.root / "logs" / f"{block.number:02d}.log"
        started, cpu = time.perf_counter(), _children_cpu()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", code],
                cwd=self.folder,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: servers stop with it
            )
        self.groups.append(proc.pid)
        try:
            returncode = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            returncode = proc.wait()
        outcome = Outcome(block, returncode, time.perf_counter() - started, log)
        outcome.cpu_seconds = _children_cpu() - cpu
        if returncode == 0 and outcome.problem() is None:
            for port in _background_ports(code):
                if not _wait_for_port(port, self.server_start_s):
                    outcome.failure = (
                        f"started no server on port {port} in {self.server_start_s:.0f} s"
                    )
                    break
            outcome.seconds = time.perf_counter() - started
        return outcome

    def stop(self) -> None:
        """Stop every process the blocks left running (servers), group by group."""
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        for group in self.groups:
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.1)
            _kill_group(group)
        self.groups.clear()


def _write_reader_text(folder: Path) -> None:
    """The text a reader brings: a folder of files (the docs), and two files of ~24 KB
    (``--data FILE`` is read whole: a small one keeps evaluations short)."""
    (folder / "my_texts").mkdir()
    for page in sorted((REPO / "docs").glob("*.md")):
        shutil.copy(page, folder / "my_texts" / page.name)
    text = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    (folder / "my_text.txt").write_text(text[:24_000])
    (folder / "my_eval.txt").write_text(text[24_000:48_000])


def _background_ports(code: str) -> list[int]:
    """The ``--port`` of every command the code sends to the background (``... &``)."""
    joined = re.sub(r"\\\n", " ", code)
    lines = [ln.split(" #")[0].rstrip() for ln in joined.splitlines()]
    return [int(p) for ln in lines if ln.endswith("&") for p in _PORT.findall(ln)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_for_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
