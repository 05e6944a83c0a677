"""Call a function of this checkout in a fresh Python process without TRITON_INTERPRET.

The test session runs Triton in its CPU interpreter (``tests/conftest.py``), where ``triton.jit``
helpers become interpreter functions that Gluon's ahead-of-time compiler refuses. Compiles for a GPU
therefore run in a child process whose Triton was never put in interpreter mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_DRIVER = """
import json, sys, importlib
module, name = sys.argv[1].rsplit(".", 1)
result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
sys.stdout.write("\\n" + json.dumps(result))
"""


def call_in_clean_process(target: str, timeout: float = 600, **kwargs):
    """``target`` is ``package.module.function``; its keyword arguments and its return value must be
    JSON-serialisable. Raises ``RuntimeError`` with the child's stderr if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", _DRIVER, target, json.dumps(kwargs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{target}({kwargs}) failed in a clean process:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.rsplit("\n", 1)[-1])


def json_lines_of_module(module: str, *args: str, timeout: float = 600) -> list[dict]:
    """Run ``python -m module args`` in a clean process (no TRITON_INTERPRET) from the checkout and
    return the JSON objects it printed one per line (the AOT compile reports). Fails the caller's
    assertion with the child's stderr if it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
