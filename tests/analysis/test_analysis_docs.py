"""The recorder example in docs/analysis.md runs as printed."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def test_recorder_example_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = next(b for b in blocks if "RoutingRecorder()" in b)
    code = code.replace("/tmp/analysis-mine", str(tmp_path))
    exec(compile(code, str(DOC), "exec"), {})
    assert (tmp_path / "report.html").is_file()
    assert "{'1':" in capsys.readouterr().out  # the cache hit rates of S = 16
