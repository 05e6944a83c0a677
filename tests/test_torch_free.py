"""Aggregation and plotting run where only pandas, matplotlib, PyYAML and jsonschema are installed:
no module of analysis/ or figures/ may import torch (directly or through kernels/ or experiments/)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_analysis_and_figures_import_no_torch():
    modules = sorted(f"{pkg}.{p.stem}" for pkg in ("analysis", "figures")
                     for p in (ROOT / pkg).glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "    assert 'torch' not in sys.modules, f'{m} imports torch'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"
