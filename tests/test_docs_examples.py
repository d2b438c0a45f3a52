"""Every python block in docs/routing.md, extending.md, lora.md, adaptive.md, frontier.md runs."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


DOCUMENTS = ["routing.md", "extending.md", "lora.md", "adaptive.md", "frontier.md"]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_doc_python_blocks_run(name):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, name, "exec"), {})
