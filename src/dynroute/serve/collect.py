"""Collect an outcome table from your own models: every prompt to every backend, scored.

:func:`collect` sends each prompt of a JSONL file (``{"prompt": ..., "reference": ...,
"id"?, "score"?}`` per line) to every OpenAI-compatible backend (``/v1/chat/completions``),
a bounded number at a time, with retries and a timeout, and appends one row per
(prompt, backend) to a long JSONL table that ``dynroute llm eval/fit`` read as it is::

    {"query", "model", "quality", "cost", "answer", "prompt_tokens", "completion_tokens",
     "latency_s", "score", "id"?}

``cost`` is the answer's ``usage`` × the backend's prices (USD per million tokens, the
``--prices`` file of ``dynroute llm serve``). ``quality`` in [0, 1] comes from the line's
reference (:data:`SCORERS`: exact, numeric, choice, regex) or from a judge backend
(:data:`JUDGE_PROMPT`: a 1–10 rating mapped to [0, 1]). A backend that does not answer
(down, timed out after the retries, an error) gives a row with ``"missing": REASON`` and
``quality``/``cost`` null: the loader drops that query rather than count a 0. The table is
appended line by line, so a killed run, run again, sends only what is not recorded yet
(and again what was recorded missing).

Example:
    >>> score_answer("numeric", "so she has 3,200 apples.", "#### 3200")
    1.0
    >>> score_answer("choice", "The answer is (B).", "b"), score_answer("exact", "Paris.", "paris")
    (1.0, 1.0)
    >>> judge_rating("Helpful and right. Rating: [[8]]")
    0.7777777777777778
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dynroute.serve.backends import Backend

__all__ = [
    "JUDGE_PROMPT",
    "JUDGE_PROMPT_WITH_REFERENCE",
    "SCORERS",
    "CollectPrompt",
    "collect",
    "judge_rating",
    "read_prompts",
    "recorded_rows",
    "score_answer",
    "summarize",
]

# ----------------------------------------------------------------------------- scoring

_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``3,200`` is 3200), or None.

    Example:
        >>> last_number("7 + 5 = 12, so #### 12."), last_number("none")
        (12.0, None)
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:  # "1,,": commas only
        return None


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!\"'`")


_CHOICE_PATTERNS = (
    # "the answer is (b)", "Answer: B"; not "the answer is a dog"
    re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*:?\s*(?:\(([A-Ja-j])\)|([A-J])\b)"),
    re.compile(r"^\s*\(?([A-J])(?:[).:]|\s*$)", re.I),  # "B", "(b)", "B. because ..."
    re.compile(r"\(([A-J])\)", re.I),  # "... so (C)"
)


def choice_letter(text: str) -> str | None:
    """The choice letter (A–J) an answer gives, or None.

    Example:
        >>> choice_letter("The answer is (c)"), choice_letter("B. Because"), choice_letter("no")
        ('C', 'B', None)
        >>> choice_letter("The answer is a dog, so (D)")
        'D'
    """
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text)
        if found:
            return next(g for g in found.groups() if g).upper()
    return None


def score_answer(mode: str, answer: str, reference: str) -> float:
    """1.0 when ``answer`` matches ``reference`` under ``mode`` (:data:`SCORERS`), else 0.0.

    ``exact``: the same text up to case, spacing and end punctuation; ``numeric``: the
    last number of the answer equals the reference's (relative tolerance 1e-6);
    ``choice``: the choice letter the answer gives is the reference letter; ``regex``: the
    reference is a regular expression found in the answer.

    Example:
        >>> score_answer("regex", "It is 42.", r"\\b42\\b"), score_answer("numeric", "x", "1")
        (1.0, 0.0)
    """
    if mode == "exact":
        return float(_normal(answer) == _normal(reference))
    if mode == "numeric":
        got, want = last_number(answer), last_number(reference)
        return float(got is not None and want is not None and math.isclose(got, want,
                     rel_tol=1e-6, abs_tol=1e-9))  # fmt: skip
    if mode == "choice":
        want_letter = choice_letter(reference) or reference.strip().upper()
        return float(choice_letter(answer) == want_letter)
    if mode == "regex":
        return float(re.search(reference, answer) is not None)
    raise ValueError(f"unknown score mode {mode!r}; use one of {', '.join(SCORERS)} or judge")


#: The reference scoring modes (``--score`` or a line's ``"score"``); ``judge`` asks the judge.
SCORERS = ("exact", "numeric", "choice", "regex")

#: The judge's prompt (MT-Bench's single-answer grading, which RouteLLM's evaluation uses):
#: a rating from 1 to 10 as ``[[r]]``, mapped to ``(r - 1) / 9``.
JUDGE_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
    "response provided by an AI assistant to the user question displayed below. Your "
    "evaluation should consider factors such as the helpfulness, relevance, accuracy, "
    "depth, creativity, and level of detail of the response. Begin your evaluation by "
    "providing a short explanation. Be as objective as possible. After providing your "
    "explanation, you must rate the response on a scale of 1 to 10 by strictly following "
    'this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
#: The judge's prompt for a line with a reference and ``"score": "judge"`` (MT-Bench's
#: grading against a reference answer).
JUDGE_PROMPT_WITH_REFERENCE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
    "response provided by an AI assistant to the user question displayed below. Your "
    "evaluation should consider correctness and helpfulness. You will be given a reference "
    "answer and the assistant's answer. Begin your evaluation by comparing the assistant's "
    "answer with the reference answer. Identify and correct any mistakes. Be as objective "
    "as possible. After providing your explanation, you must rate the response on a scale "
    'of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n'
    "{reference}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n"
    "{answer}\n[The End of Assistant's Answer]"
)
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def judge_rating(text: str) -> float | None:
    """The judge's last ``[[r]]`` (1 ≤ r ≤ 10) as ``(r - 1) / 9`` in [0, 1]; None if none.

    Example:
        >>> judge_rating("[[10]]"), judge_rating("[[1]]"), judge_rating("[[11]]")
        (1.0, 0.0, None)
    """
    found = [float(r) for r in _RATING.findall(text) if 1 <= float(r) <= 10]
    return (found[-1] - 1) / 9 if found else None


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class CollectPrompt:
    """One line of the prompts file: its text, reference, how to score it, its id."""

    query: str
    reference: str | None
    score: str  # one of SCORERS or "judge"
    id: str | None = None
    line: int = 0


def _prompt_of(raw: Any, where: str, default_score: str) -> CollectPrompt:
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str) or not raw["prompt"]:
        raise ValueError(f'{where}: needs a JSON object with a non-empty "prompt" string')
    ref = raw.get("reference")
    if ref is not None and not isinstance(ref, str | int | float):
        raise ValueError(f'{where}: "reference" must be a string or a number, got {ref!r}')
    ref = None if ref is None else str(ref)
    mode = str(raw.get("score", default_score if ref is not None else "judge"))
    if mode not in (*SCORERS, "judge"):
        raise ValueError(f"{where}: unknown score {mode!r}; use one of {', '.join(SCORERS)}, judge")
    if mode != "judge" and ref is None:
        raise ValueError(f'{where}: score {mode!r} needs a "reference"; add one or use a judge')
    if mode == "regex":
        try:
            re.compile(ref or "")
        except re.error as err:
            raise ValueError(f"{where}: the reference is not a valid regex ({err})") from None
    ident = raw.get("id")
    return CollectPrompt(raw["prompt"], ref, mode, None if ident is None else str(ident))


def read_prompts(path: str | Path, default_score: str = "exact") -> list[CollectPrompt]:
    """The prompts of a JSONL file, each prompt text once (a repeated text is one query of
    the table: the first line counts); a ValueError names the file and the bad line.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "p.jsonl")
        >>> _ = open(p, "w").write('{"prompt": "2+2?", "reference": "4"}\\n{"prompt": "hi"}\\n')
        >>> [(c.query, c.score) for c in read_prompts(p, "numeric")]
        [('2+2?', 'numeric'), ('hi', 'judge')]
    """
    if default_score not in (*SCORERS, "judge"):
        raise ValueError(f"--score {default_score!r} is unknown; use one of "
                         f"{', '.join(SCORERS)}, judge")  # fmt: skip
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such prompts file; pass --prompts FILE (JSONL lines "
                                '{"prompt": ..., "reference": ...})')  # fmt: skip
    prompts: dict[str, CollectPrompt] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{p} line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg}); one object a line") from None
        prompt = _prompt_of(raw, where, default_score)
        prompts.setdefault(prompt.query, CollectPrompt(**{**prompt.__dict__, "line": n}))
    if not prompts:
        raise ValueError(f"{p}: no prompts; write one JSON object a line")
    return list(prompts.values())


# ----------------------------------------------------------------------------- the table


def recorded_rows(out: str | Path) -> list[dict[str, Any]]:
    """The rows already in the table ``out`` (none if it does not exist). A last line cut
    short by a killed run is removed from the file (its request is sent again)."""
    p = Path(out)
    if not p.exists():
        return []
    data = p.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # killed while writing a line: drop the fragment
        with p.open("r+b") as f:
            f.truncate(len(complete))
    rows = []
    for n, line in enumerate(complete.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not {"query", "model"} <= set(row):
            raise ValueError(f"{p} line {n} is not a row `dynroute llm collect` writes (JSON "
                             'with "query" and "model"); pass a new --out')  # fmt: skip
        rows.append(row)
    return rows


def latest_cells(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(query, model) -> row``, the last row of each cell (a retry replaces a missing one)."""
    return {(str(r["query"]), str(r["model"])): r for r in rows}


def summarize(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """Rows, missing cells, and per model the mean quality, cost and latency of its answers.

    Example:
        >>> s = summarize([{"query": "q", "model": "a", "quality": 1.0, "cost": 0.5,
        ...                 "latency_s": 0.1}, {"query": "q", "model": "b", "missing": "down",
        ...                 "quality": None, "cost": None}], ["a", "b"])
        >>> s["rows"], s["missing"], s["models"]["a"]["quality"], s["models"]["b"]["answered"]
        (2, 1, 1.0, 0)
    """
    cells = latest_cells(rows)
    per: dict[str, Any] = {}
    for m in models:
        done = [r for (_, model), r in cells.items() if model == m and not r.get("missing")]
        per[m] = {"answered": len(done)}
        for key in ("quality", "cost", "latency_s"):
            per[m][key] = sum(r[key] for r in done) / len(done) if done else None
    missing = sum(1 for r in cells.values() if r.get("missing"))
    return {"rows": len(cells), "missing": missing, "models": per}


# ----------------------------------------------------------------------------- sending


class Unanswered(Exception):
    """A backend gave no usable answer; the message is the row's ``missing`` reason."""


@dataclass
class Sender:
    """Sends chat requests with retries; ``retries`` more tries after a transient fault
    (unreachable, timed out, 408, 429, 5xx), waiting ``backoff_s`` × 2^try between."""

    client: httpx.AsyncClient
    retries: int = 2
    backoff_s: float = 0.5
    max_tokens: int | None = None
    temperature: float = 0.0
    down: dict[str, str] = field(default_factory=dict)  # backend -> why it is given up

    async def ask(
        self, b: Backend, text: str, capped: bool = True
    ) -> tuple[str, dict[str, Any], float]:
        """``(answer, usage, seconds)`` of one chat request (``max_tokens`` when ``capped``;
        a judge writes its reasons uncapped); raises :class:`Unanswered`."""
        if b.name in self.down:  # its breaker opened: do not wait out every retry again
            raise Unanswered(self.down[b.name])
        body: dict[str, Any] = {
            "model": b.model,
            "temperature": self.temperature if capped else 0.0,
            "messages": [{"role": "user", "content": text}],
        }
        if self.max_tokens is not None and capped:
            body["max_tokens"] = self.max_tokens
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            start = time.perf_counter()
            try:
                resp = await self.client.post(b.url("/chat/completions"), json=body,
                                              headers=b.headers())  # fmt: skip
            except httpx.HTTPError as err:
                why = f"{type(err).__name__}: {err}".rstrip(": ")
                continue
            if resp.status_code in (408, 429) or resp.status_code >= 500:
                why = f"HTTP {resp.status_code}"
                continue
            b.breaker.success()
            return (*_parse_answer(resp), time.perf_counter() - start)
        self._fault(b, why)
        raise Unanswered(f"{b.name}: {why} (after {self.retries + 1} tries)")

    def _fault(self, b: Backend, why: str) -> None:
        b.breaker.fault()
        if b.breaker.state() != "closed":
            self.down[b.name] = f"{b.name}: {why} (given up after {b.breaker.threshold} failures)"


def _parse_answer(resp: httpx.Response) -> tuple[str, dict[str, Any]]:
    if resp.status_code != 200:
        raise Unanswered(f"HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        body = resp.json()
        text = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Unanswered("the answer has no choices[0].message.content") from None
    usage = body.get("usage")
    if not isinstance(text, str) or not isinstance(usage, dict):
        raise Unanswered("the answer has no text or no usage")
    return text, usage


async def outcome_row(
    p: CollectPrompt, b: Backend, sender: Sender, judge: Backend | None
) -> dict[str, Any]:
    """One table row: ``p`` asked of ``b``, priced and scored (or ``missing`` with why)."""
    row: dict[str, Any] = {"query": p.query, "model": b.name, "quality": None, "cost": None}
    if p.id is not None:
        row["id"] = p.id
    try:
        answer, usage, seconds = await sender.ask(b, p.query)
        cost = b.cost(usage.get("prompt_tokens"), usage.get("completion_tokens"))  # type: ignore[arg-type]
        if cost is None:
            raise Unanswered(f"usage {usage} cannot be priced")
        row.update(answer=answer, prompt_tokens=usage["prompt_tokens"],
                   completion_tokens=usage["completion_tokens"], latency_s=round(seconds, 4),
                   score=p.score)  # fmt: skip
        row["quality"] = await quality_of(p, answer, sender, judge)
        row["cost"] = round(cost, 12)  # USD; no float noise (1.7199999999999998e-05)
    except Unanswered as why:
        row["missing"] = str(why)
    return row


async def quality_of(p: CollectPrompt, answer: str, sender: Sender, judge: Backend | None) -> float:
    """The answer's quality: by the reference, or the judge's rating (Unanswered if none)."""
    if p.score != "judge":
        return score_answer(p.score, answer, p.reference or "")
    if judge is None:
        raise ValueError(f"line {p.line} needs a judge: pass --judge NAME=URL")
    template = JUDGE_PROMPT if p.reference is None else JUDGE_PROMPT_WITH_REFERENCE
    text = template.format(question=p.query, answer=answer, reference=p.reference)
    verdict, _, _ = await sender.ask(judge, text, capped=False)
    rating = judge_rating(verdict)
    if rating is None:
        raise Unanswered(f"judge {judge.name} gave no [[rating]] from 1 to 10")
    return rating


# ----------------------------------------------------------------------------- the run


def check_collect(prompts: Sequence[CollectPrompt], backends: Sequence[Backend],
                  judge: Backend | None) -> None:  # fmt: skip
    """Before anything is sent: every backend priced, a judge where a line needs one."""
    unpriced = [b.name for b in backends if not b.priced]
    if unpriced:
        raise ValueError(
            f"no prices for backend(s) {unpriced}: pass --prices FILE with [backends.NAME] "
            "prompt_price and completion_price (USD per million tokens; 0 for free models)"
        )
    judged = [p.line for p in prompts if p.score == "judge"]
    if judged and judge is None:
        raise ValueError(
            f"{len(judged)} prompt(s) need a judge (no reference, or score judge; first: line "
            f"{judged[0]}): pass --judge NAME=URL, or give each a reference"
        )


async def collect(
    prompts: Sequence[CollectPrompt],
    backends: Sequence[Backend],
    out: str | Path,
    *,
    judge: Backend | None = None,
    concurrency: int = 4,
    retries: int = 2,
    timeout_s: float = 120.0,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    on_row: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Ask every backend every prompt not yet answered in ``out``; append a row each.

    At most ``concurrency`` requests are out at once; answers are sampled at
    ``temperature`` (0: greedy), a judge's always greedily. ``on_row(done, total, row)``
    is called after each row written (``done`` counts the rows already in ``out`` too).
    Returns :func:`summarize` of the whole table plus ``sent`` (rows this run wrote).
    """
    check_collect(prompts, backends, judge)
    for flag, value, low in (
        ("--concurrency", concurrency, 1),
        ("--retries", retries, 0),
        ("--max-tokens", max_tokens, 1),
        ("--timeout", timeout_s, 1e-3),
    ):
        if value is not None and not value >= low:
            raise ValueError(f"{flag} must be >= {low:g}, got {value}")
    path = Path(out)
    done = {cell for cell, r in latest_cells(recorded_rows(path)).items() if not r.get("missing")}
    todo = [(p, b) for p in prompts for b in backends if (p.query, b.name) not in done]
    total, count = len(prompts) * len(backends), len(prompts) * len(backends) - len(todo)
    queue: asyncio.Queue[tuple[CollectPrompt, Backend]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        sender = Sender(client, retries, max_tokens=max_tokens, temperature=temperature)
        with path.open("a", encoding="utf-8") as f:

            async def worker() -> None:
                nonlocal count
                while not queue.empty():
                    p, b = queue.get_nowait()
                    row = await outcome_row(p, b, sender, judge)
                    # one write and a flush a row: a kill loses at most the line being written
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    count += 1
                    if on_row is not None:
                        on_row(count, total, row)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(todo)) or 1)))
    summary = summarize(recorded_rows(path), [b.name for b in backends])
    return {**summary, "sent": len(todo), "out": str(path)}
