"""The runnable python blocks of docs/hf.md run as printed (in order, one namespace)."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "hf.md"
#: blocks before the compile/export one (compiling takes minutes on a small CPU)
QUICK_BLOCKS = 4


def _run_blocks(count: int | None) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 5
    namespace: dict = {}
    for code in blocks[:count]:
        exec(compile(code, str(DOC), "exec"), namespace)


def test_hf_doc_python_blocks_run(capsys):
    _run_blocks(QUICK_BLOCKS)
    out = capsys.readouterr().out
    assert "experts/token instead of 2" in out and "'router': 'top_p'" in out


@pytest.mark.slow
def test_hf_doc_compile_and_export_block_runs(capsys):
    _run_blocks(None)
    assert "torch.Size([2, 11]) True" in capsys.readouterr().out
