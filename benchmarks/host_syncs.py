"""Host syncs per MoE layer call (forward + backward), for every router and dispatch path.

    PYTHONPATH=src python benchmarks/host_syncs.py                 # prints the table
    PYTHONPATH=src python benchmarks/host_syncs.py --label after   # and stores it
    PYTHONPATH=src python benchmarks/host_syncs.py --cuda --out OUT.json   # on a GPU

Counts the ops that would force a device→host sync on CUDA (see
``dynroute.diagnostics.syncs``) while one MoE layer runs forward and backward on CPU.
With ``--label`` the counts are stored under that label in
benchmarks/results/host_syncs.json (with the git commit), so the "before" and "after"
of a change sit side by side; ``--markdown`` prints the table of every stored label.

``--cuda`` checks the same on a GPU with torch's own detector
(``torch.cuda.set_sync_debug_mode``): bf16, grouped dispatch, forward + backward; the
syncs it reports per router, and whether routers with a static A run in "error" mode.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from dynroute.common.jsonfile import write_json
from dynroute.diagnostics.syncs import SyncCounter
from dynroute.dispatch import dense, grouped, loop
from dynroute.layers.moe import MoE
from dynroute.routing import ROUTERS, make_router

RESULTS = Path(__file__).parent / "results" / "host_syncs.json"
#: Parameters of the routers that need some (others are built with their defaults).
ROUTER_SPECS = {
    "top_k": "top_k:k=2",
    "top_p": "top_p:p=0.4",
    "null_experts": "null_experts:k=2,num_null=2",
}
#: name -> (dispatch, expert layout); "grouped" on float32 stacked SwiGLU takes grouped_mm.
PATHS: dict[str, tuple[Any, str]] = {
    "grouped": (grouped, "stacked"),
    "grouped slices": (functools.partial(grouped, path="slices"), "stacked"),
    "grouped autograd": (functools.partial(grouped, path="autograd"), "stacked"),
    "grouped per_expert": (grouped, "per_expert"),
    "loop": (loop, "stacked"),
    "dense": (dense, "stacked"),
}


def count_syncs(
    router: str, path: str, tokens: int = 64, d_model: int = 16, experts: int = 8
) -> dict[str, Any]:
    """Syncs of one MoE layer call: ``{"forward": n, "backward": n, "ops": {...}}``."""
    dispatch, layout = PATHS[path]
    torch.manual_seed(0)
    moe = MoE(
        d_model, 2 * d_model, experts, router=make_router(router), dispatch=dispatch,
        expert_layout=layout,
    )  # fmt: skip
    x = torch.randn(tokens, d_model, requires_grad=True)
    with SyncCounter() as fwd:
        y, aux = moe(x)
        loss = y.square().mean() + aux.loss
    with SyncCounter() as bwd:
        loss.backward()
    ops = dict(fwd.by_op)
    for name, n in bwd.by_op.items():
        ops[name] = ops.get(name, 0) + n
    return {"forward": fwd.total, "backward": bwd.total, "ops": ops}


def measure() -> dict[str, dict[str, Any]]:
    """Counts for every registered router × dispatch path."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(ROUTERS):
        spec = ROUTER_SPECS.get(name, name)
        try:
            make_router(spec)
        except (TypeError, ValueError) as err:
            print(f"skip {name}: needs parameters ({err})")
            continue
        out[spec] = {path: count_syncs(spec, path) for path in PATHS}
    return out


CUDA_ZERO = ("top_k:k=2", "expert_choice")  # A is static: must run in "error" mode


def cuda_syncs(router: str, tokens: int = 4096, d_model: int = 1024) -> dict[str, Any]:
    """Syncs torch's CUDA detector reports for one bf16 MoE layer call (after a warm-up)."""
    import warnings

    moe = MoE(d_model, 2 * d_model, 8, router=make_router(router)).cuda().to(torch.bfloat16)
    x = torch.randn(tokens, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step() -> None:
        y, aux = moe(x)
        (y.float().square().mean() + aux.loss).backward()

    step()  # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    result: dict[str, Any] = {}
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    result["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    result["where"] = sorted({f"{w.filename}:{w.lineno}" for w in caught})
    if router in CUDA_ZERO:
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            result["error_mode"] = "passed"
        except RuntimeError as err:
            result["error_mode"] = f"failed: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return result


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(results: dict[str, Any]) -> str:
    """One row per router and label, one column per path: forward + backward syncs."""
    labels = [k for k in ("before", "after") if k in results] + [
        k for k in results if k not in ("before", "after", "meta")
    ]
    lines = [
        "| router | counted at | " + " | ".join(PATHS) + " |",
        "|---|---|" + "---:|" * len(PATHS),
    ]
    routers = dict.fromkeys(r for label in labels for r in results[label]["counts"])
    for router in routers:
        for label in labels:
            counts = results[label]["counts"].get(router)
            if counts is None:
                continue
            cells = [
                f"{c['forward']}+{c['backward']}" if (c := counts.get(p)) else "–" for p in PATHS
            ]
            commit = results[label]["commit"]
            lines.append(f"| {router} | {label} ({commit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--label", help="store the counts under this label (e.g. before, after)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--markdown", action="store_true", help="print the table of stored labels")
    ap.add_argument("--cuda", action="store_true", help="count with CUDA's sync detector")
    ap.add_argument("--dry-run", action="store_true", help="with --cuda: list what would run")
    args = ap.parse_args()
    if args.cuda:
        routers = [ROUTER_SPECS.get(n, n) for n in sorted(ROUTERS)]
        if args.dry_run:
            print("would count CUDA syncs (bf16, grouped, fwd+bwd) for: " + ", ".join(routers))
            return
        if not torch.cuda.is_available():
            raise SystemExit("--cuda needs a CUDA device (none found)")
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "commit": git_commit(), "routers": {}}  # fmt: skip
        for router in routers:
            report["routers"][router] = cuda_syncs(router)
            print(router, report["routers"][router])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, report, indent=1)
        failed = [
            r for r, v in report["routers"].items() if v.get("error_mode", "passed") != "passed"
        ]
        if failed:
            raise SystemExit(f"syncs in error mode for {failed}; see {args.out}")
        return
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.markdown:
        counts = measure()
        for router, paths in counts.items():
            for path, c in paths.items():
                fb = f"fwd {c['forward']}  bwd {c['backward']}"
                print(f"{router:<30} {path:<20} {fb}  {c['ops']}")
        if args.label:
            stored[args.label] = {"commit": git_commit(), "counts": counts}
            stored["meta"] = {
                "what": "device->host syncs per MoE layer call (forward, backward), counted "
                "on CPU with dynroute.diagnostics.SyncCounter",
                "shape": {"tokens": 64, "d_model": 16, "experts": 8, "dtype": "float32"},
                "torch": torch.__version__,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, stored, indent=1)
            print(f"wrote {args.out}")
    print(markdown(stored if stored else {}))


if __name__ == "__main__":
    main()
