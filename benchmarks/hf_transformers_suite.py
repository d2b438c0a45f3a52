"""transformers' own model tests, unpatched and patched with dynroute.hf: do the outcomes match?

For each family the family's test file runs twice under pytest: as shipped, and with a
plugin that calls ``dynroute.hf.apply_routing(model, ROUTER)`` on every model of that
family right after it is built (``post_init``, the last step of every transformers
model's ``__init__``) and after ``from_pretrained``. The plugin also counts the tests in
which a patched MoE block really ran. Pass/fail/skip sets of both runs and their
difference go to benchmarks/results/hf_transformers_suite.json.

transformers' test files are not part of this repository: point ``--tests-dir`` at a
transformers checkout (or the ``tests/`` of its sdist plus the family test files), of
the version that is installed, since tests from another version may fail unpatched too:
what matters is patched = unpatched. A ``SOURCES.json`` in ``--tests-dir`` (file -> the
transformers commit it came from) is copied into the results' meta.

    python benchmarks/hf_transformers_suite.py --tests-dir ~/src/transformers \\
        --family mixtral --family olmoe [--slow] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import transformers

from dynroute.common.jsonfile import write_json

RESULTS = Path(__file__).parent / "results" / "hf_transformers_suite.json"
PLUGIN_NAME = "dynroute_hf_suite_plugin"

# The plugin, written to a temporary folder on PYTHONPATH and loaded with ``-p``.
PLUGIN = """
import json, os
import transformers
from dynroute.hf import apply_routing
from dynroute.hf.block import DynamicMoEBlock
from dynroute.hf.families import UnsupportedModelError

ROUTER = os.environ["DYNROUTE_SUITE_ROUTER"]
REPORT = os.environ["DYNROUTE_SUITE_REPORT"]
_calls = {"n": 0}
_ran = {}
_post_init = transformers.PreTrainedModel.post_init
_from_pretrained = transformers.PreTrainedModel.from_pretrained.__func__
_forward = DynamicMoEBlock.forward


def _patch(model):
    params = list(model.parameters())
    if params and params[0].device.type == "meta":
        return  # from_pretrained builds on meta first; patched after loading instead
    try:
        apply_routing(model, ROUTER)
    except UnsupportedModelError:
        pass


def post_init(self, *args, **kwargs):
    out = _post_init(self, *args, **kwargs)
    _patch(self)
    return out


def from_pretrained(cls, *args, **kwargs):
    model = _from_pretrained(cls, *args, **kwargs)
    if isinstance(model, tuple):  # output_loading_info=True
        _patch(model[0])
    else:
        _patch(model)
    return model


def forward(self, *args, **kwargs):
    _calls["n"] += 1
    return _forward(self, *args, **kwargs)


transformers.PreTrainedModel.post_init = post_init
transformers.PreTrainedModel.from_pretrained = classmethod(from_pretrained)
DynamicMoEBlock.forward = forward


def pytest_runtest_setup(item):
    _calls["n"] = 0


def pytest_runtest_teardown(item):
    _ran[item.nodeid] = _ran.get(item.nodeid, 0) + _calls["n"]


def pytest_sessionfinish(session):
    with open(REPORT, "w") as f:
        json.dump(_ran, f)
"""


def test_file(tests_dir: Path, family: str) -> Path:
    return tests_dir / "tests" / "models" / family / f"test_modeling_{family}.py"


def outcomes(junit: Path) -> dict[str, str]:
    """nodeid-like ``Class::test`` -> passed / failed / error / skipped, from a junit XML."""
    result: dict[str, str] = {}
    if not junit.exists():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        tags = {child.tag for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
        result[name] = {"failure": "failed"}.get(outcome, outcome)
    return result


def failure_messages(junit: Path) -> dict[str, str]:
    """``Class::test`` -> the first line of its failure or error message, from a junit XML."""
    result: dict[str, str] = {}
    if not junit.exists():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
                lines = (child.get("message") or "").strip().splitlines()
                result[name] = lines[0][:300] if lines else ""
    return result


def run_pytest(args: argparse.Namespace, family: str, patched: bool, work: Path) -> dict[str, Any]:
    """One pytest run of a family's test file; its outcomes and (patched) block usage."""
    label = "patched" if patched else "unpatched"
    junit = work / f"{family}-{label}.xml"
    report = work / f"{family}-{label}-ran.json"
    env = dict(os.environ, DYNROUTE_SUITE_ROUTER=args.router, DYNROUTE_SUITE_REPORT=str(report))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(work), str(args.tests_dir), env.get("PYTHONPATH", "")) if p
    )
    if args.slow:
        env["RUN_SLOW"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN"]
    command += [f"--junitxml={junit}", str(test_file(args.tests_dir, family))]
    command += ["-p", PLUGIN_NAME] if patched else []
    command += args.pytest_args
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=args.tests_dir, env=env, timeout=args.timeout, capture_output=True
        )
        status = f"exit {proc.returncode}"
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        status, tail = f"timed out after {args.timeout} s", []
    ran = json.loads(report.read_text()) if report.exists() else {}
    return {
        "status": status,
        "summary": tail[0] if tail else "",
        "seconds": round(time.perf_counter() - start, 1),
        "outcomes": outcomes(junit),
        "messages": failure_messages(junit),
        "tests_running_a_patched_block": sum(1 for n in ran.values() if n) if patched else None,
    }


def compare(unpatched: dict[str, str], patched: dict[str, str]) -> dict[str, Any]:
    """Per-outcome counts of both runs and every test whose outcome differs."""

    def count(o: dict[str, str]) -> dict[str, int]:
        kinds = ("passed", "failed", "error", "skipped")
        return {k: sum(1 for v in o.values() if v == k) for k in kinds}

    differ = {
        name: {"unpatched": unpatched.get(name, "absent"), "patched": patched.get(name, "absent")}
        for name in sorted(set(unpatched) | set(patched))
        if unpatched.get(name) != patched.get(name)
    }
    return {
        "unpatched": count(unpatched),
        "patched": count(patched),
        "differ": differ,
        "same": not differ,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests-dir", type=Path, required=True, help="transformers checkout")
    parser.add_argument("--family", action="append", required=True, help="e.g. mixtral, olmoe")
    parser.add_argument("--router", default="top_k", help="what apply_routing gets")
    parser.add_argument("--slow", action="store_true", help="RUN_SLOW=1 (export tests etc.)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args()
    args.tests_dir = args.tests_dir.resolve()
    for family in args.family:
        if not test_file(args.tests_dir, family).exists():
            parser.error(f"--family {family}: no {test_file(args.tests_dir, family)}")
    families: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / f"{PLUGIN_NAME}.py").write_text(PLUGIN)
        for family in args.family:
            runs = {
                label: run_pytest(args, family, label == "patched", work)
                for label in ("unpatched", "patched")
            }
            diff = compare(runs["unpatched"]["outcomes"], runs["patched"]["outcomes"])
            families[family] = {"runs": runs, **diff}
            print(
                f"{family}: unpatched {diff['unpatched']}, patched {diff['patched']}, "
                f"{len(diff['differ'])} differ; tests running a patched block: "
                f"{runs['patched']['tests_running_a_patched_block']}"
            )
            for name, pair in diff["differ"].items():
                print(f"  {name}: {pair['unpatched']} -> {pair['patched']}")
    sources = args.tests_dir / "SOURCES.json"  # where each test file came from, if recorded
    meta = {
        "transformers": transformers.__version__,
        "tests_dir": str(args.tests_dir),
        "test_files": json.loads(sources.read_text()) if sources.exists() else None,
        "router": args.router,
        "slow": args.slow,
        "pytest_args": args.pytest_args,
    }
    write_json(args.out, {"meta": meta, "families": families})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
