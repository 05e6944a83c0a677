"""Run the figure-7 fusion micro-benchmark (kernels/microbench/fusion_bench.cu) from its YAML.

    python -m experiments.microbench_run experiments/microbench/figure7.yaml --binary BIN --out CSV

Adds the provenance columns of experiments/provenance.py to every line of the binary's CSV.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import jsonschema
import yaml

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "blocks", "threads", "mem_steps", "inner", "compute_iters"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "blocks": {"type": "integer", "minimum": 1},
        "threads": {"type": "integer", "minimum": 32, "maximum": 512, "multipleOf": 32},
        "mem_steps": {"type": "integer", "minimum": 1},
        "inner": {"type": "integer", "minimum": 1},
        "compute_iters": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}},
        "repeats": {"type": "integer", "minimum": 1},
        "calls": {"type": "integer", "minimum": 1},
    },
}


class MicrobenchError(ValueError):
    """Bad YAML or no way to run the binary; the message says which field or what to do."""


def load_config(path) -> dict:
    """Read and validate the micro-benchmark YAML; errors name the file and the field."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        raise MicrobenchError("\n".join(f"{path}: {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}"
                                        for e in errors))
    return doc


def command(binary: str, cfg: dict) -> list:
    """The binary's command line for ``cfg``."""
    return [binary, "--blocks", str(cfg["blocks"]), "--threads", str(cfg["threads"]),
            "--mem-steps", str(cfg["mem_steps"]), "--inner", str(cfg["inner"]),
            "--iters", ",".join(map(str, cfg["compute_iters"])), "--repeats", str(cfg.get("repeats", 5)),
            "--calls", str(cfg.get("calls", 10))]


def run(config_path: str, binary: str, out: str) -> int:
    """Run the sweep and write the CSV with provenance; returns the number of lines."""
    import pandas as pd
    import torch

    from experiments.provenance import provenance, stamp

    cfg = load_config(config_path)
    if not os.path.exists(binary):
        raise MicrobenchError(f"{binary}: not built; `snakemake figure7` builds it with nvcc")
    if not torch.cuda.is_available():
        raise MicrobenchError("the micro-benchmark needs a CUDA GPU; without one use `make figures` "
                              "(shipped results)")
    r = subprocess.run(command(binary, cfg), capture_output=True, text=True)
    if r.returncode != 0:
        raise MicrobenchError(f"{binary} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    df = pd.read_csv(io.StringIO(r.stdout))
    prov = stamp(provenance(torch.device("cuda")))
    for k, v in prov.items():
        if k not in df:
            df[k] = v
    df.insert(0, "experiment", cfg["name"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    df.to_csv(out, index=False)
    return len(df)


def main(argv=None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.microbench_run", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        n = run(args.config, args.binary, args.out)
    except MicrobenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
