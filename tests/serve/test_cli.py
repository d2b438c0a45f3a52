"""Bad command lines of `dynroute serve` / `dynroute llm serve`: one line, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

from serving_procs import cli_env


def test_bad_inputs_fail_in_one_line(tmp_path, tiny_models, router_dir):
    bad_prices = tmp_path / "prices.toml"
    bad_prices.write_text("[backends.small\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    free = ["--port", "1"]  # never bound: every case fails before listening
    cases = {
        "missing model": (["serve", str(tmp_path / "nope"), *free], str(tmp_path / "nope")),
        "port in use": (["serve", str(tiny_models["small"]), "--port", port], f"port {port}"),
        "missing router": (
            ["llm", "serve", str(tmp_path / "r"), "--backend", "a=http://h", *free],
            str(tmp_path / "r"),
        ),
        "unknown backend": (
            ["llm", "serve", str(router_dir), "--backend", "gpt=http://h", *free],
            "['small', 'big']",
        ),
        "no url": (
            ["llm", "serve", str(router_dir), "--backend", "small", *free],
            "NAME=URL",
        ),
        "bad prices": (
            [
                "llm",
                "serve",
                str(router_dir),
                "--backend",
                "small=http://h",
                "--prices",
                str(bad_prices),
                *free,
            ],
            str(bad_prices),
        ),
    }
    try:
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "dynroute.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(),
            )
            for name, (args, _) in cases.items()
        }
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            assert proc.returncode not in (0, None), name
            assert "Traceback" not in err, (name, err)
            assert cases[name][1] in err.replace("\n", ""), (name, err)
    finally:
        busy.close()
