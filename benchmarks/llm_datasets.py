"""Derive the shipped LLM-routing tables in ``src/dynroute/llm/datasets/`` from the sources.

Usage: ``python benchmarks/llm_datasets.py [SOURCE_DIR]`` (default
``../shared/data/llm-routing``). The output is deterministic (gzip mtime 0); see
``src/dynroute/llm/datasets/README.md`` for the cost rule.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from dynroute.llm.data import OutcomeTable, write_wide_jsonl

OUT = Path(__file__).resolve().parents[1] / "src" / "dynroute" / "llm" / "datasets"
CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English BPE tokenizers
LLMROUTER_ANSWER_TOKENS = 256  # assumed answer length: LLMRouter gives no token counts
MMLU_ANSWER_TOKENS = 8  # a letter plus a few tokens of framing
# RouteLLM's blended prices (USD per million tokens, 1:1 input/output) from its paper.
ROUTELLM_PRICES = {"mixtral-8x7b-instruct": 0.24, "gpt-4-1106-preview": 24.7}
ROUTELLM_COLUMNS = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
    "gpt-4-1106-preview": "gpt-4-1106-preview",
}


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def llmrouter(src: Path) -> OutcomeTable:
    prices = json.loads((src / "llm_candidates.json").read_text())
    train = json.loads((src / "dcrouter_train.json").read_text())
    test = json.loads((src / "dcrouter_test.json").read_text())
    models = tuple(train[0]["scores"])
    test_prompts = {r["question"].strip() for r in test}
    # Never the same prompt on both sides: drop train rows whose prompt is in test.
    rows = [(r, "train") for r in train if r["question"].strip() not in test_prompts]
    rows += [(r, "test") for r in test]
    quality = [[r["scores"][m] for m in models] for r, _ in rows]
    cost = [
        [
            (
                tokens(r["question"]) * prices[m]["input_price"]
                + LLMROUTER_ANSWER_TOKENS * prices[m]["output_price"]
            )
            / 1e6
            for m in models
        ]
        for r, _ in rows
    ]
    return OutcomeTable.from_rows(
        [r["question"] for r, _ in rows], models, quality, cost, [s for _, s in rows]
    )


def contaminated(path: Path) -> set[str]:
    return {
        json.loads(line)["eval_prompt"].strip()
        for line in path.read_text().splitlines()
        if line.strip()
    }


def routellm(src: Path, task: str) -> OutcomeTable:
    csv.field_size_limit(sys.maxsize)
    files = (
        sorted((src / "mmlu").glob("mmlu_*.csv"))
        if task == "mmlu"
        else [src / "gsm8k" / "gsm8k_responses.csv"]
    )
    skip = contaminated(src / task / "contaminated_prompts.jsonl")
    queries, quality, cost = [], [], []
    for f in files:
        with open(f, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                if r["prompt"].strip() in skip:  # RouteLLM excludes these from evaluation
                    continue
                queries.append(r["prompt"])
                quality.append([float(r[c] == "True") for c in ROUTELLM_COLUMNS])
                row = []
                for col, name in ROUTELLM_COLUMNS.items():
                    out = tokens(r[f"{col}_response"]) if task == "gsm8k" else MMLU_ANSWER_TOKENS
                    row.append((tokens(r["prompt"]) + out) * ROUTELLM_PRICES[name] / 1e6)
                cost.append(row)
    return OutcomeTable.from_rows(queries, list(ROUTELLM_COLUMNS.values()), quality, cost)


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/llm-routing")
    tables = {
        "llmrouter.jsonl.gz": llmrouter(src / "llmrouter"),
        "routellm_mmlu.jsonl.gz": routellm(src / "routellm", "mmlu"),
        "routellm_gsm8k.jsonl.gz": routellm(src / "routellm", "gsm8k"),
    }
    for name, table in tables.items():
        write_wide_jsonl(table, OUT / name)
        acc = np.round(table.quality.mean(0), 3).tolist()
        print(f"{name}: {table.num_queries} queries, {table.models}, mean quality {acc}")


if __name__ == "__main__":
    main()
