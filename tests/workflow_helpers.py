"""Run the Snakemake workflow of this checkout from tests, with this interpreter's environment."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a run may create or never needs; everything else is the workflow's source.
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".whl", ".snakemake", ".pytest_cache", "__pycache__",
                                     "results", "results-smoke")


def snakemake(args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    """``python -m snakemake ARGS`` in ``cwd``; the rules' ``python`` is this interpreter."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)


def copy_checkout(dest: Path) -> Path:
    """A copy of the workflow's source, without results, so that a run writes nothing here."""
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
    return dest
