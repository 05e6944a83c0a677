"""The batches of a tuning study, chosen from the figure-11 table by a rule instead of by hand.

    python -m experiments.select NAME            # print the configs: block the rule gives
    python -m experiments.select NAME --check    # exit 1 unless experiments/studies/NAME.yaml lists exactly those
    python -m experiments.select NAME --write    # rewrite that YAML's configs: block from the rule

A rule (``SELECTIONS``) reads ``results/tables/figure11.csv`` and keeps the rows that pass it:

- ``kept``: only batches the figure's filter keeps (each FlashAttention-2 part at least 20% of
  ``FA_Serial``);
- ``dominance_below``: prefill FLOPs < this x machine balance (295 FLOP/byte, H100 dense fp16 over
  HBM3) x decode bytes, the quantity POD's automatic CTAs-per-SM rule compares with its threshold
  (``PREFILL_DOMINANCE`` in kernels/pod/plan.py): below it the rule picks 4 CTAs per SM;
- ``add`` / ``drop``: row keys the filter kept (or not) when the study was run but does not in the
  committed table (its FlashAttention-2 part times were measured again since); listed, not guessed;
- ``order``: the columns the configs are sorted by.

The YAML's configs: block is what the runner reads (the experiment schema has no select: field);
this module is how it was made, and tests/test_select.py checks that the two agree.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "results" / "tables" / "figure11.csv"
MACHINE_BALANCE = 295.0  # FLOP per byte: 989 TFLOP/s dense fp16 over 3.35 TB/s (H100 SXM)
CONFIG_FIELDS = ("model", "prefill_len", "prefill_kv_len", "decode_batch", "decode_ctx")

# Kept by the figure-11 filter at 8cf806a (1448 kept batches then, 1445 in the committed table): the
# FA_prefill / FA_decode lines that decide the filter were timed again on the same-machine lease.
_KEPT_AT_8CF806A_ONLY = [
    "llama-3-8b-tp2|float16|p1024@5120|d45x20480|ps16", "yi-6b-tp4|float16|p2048@6144|d208x20480|ps16",
    "yi-6b|float16|p512@8192|d72x12288|ps16", "yi-6b-tp4|float16|p2048@8192|d219x20480|ps16",
    "llama-3-8b|float16|p512@6656|d51x8192|ps16", "yi-6b-tp2|float16|p512@13824|d125x16384|ps16",
    "llama-3-8b|float16|p512@4608|d20x20480|ps16", "llama-3-8b-tp2|float16|p1024@8192|d86x12288|ps16",
    "yi-6b-tp2|float16|p2048@4096|d264x8192|ps16", "yi-6b-tp4|float16|p2048@8192|d366x12288|ps16",
    "llama-3-8b|float16|p1024@3072|d23x20480|ps16", "yi-6b|float16|p512@6656|d54x16384|ps16",
    "llama-3-8b-tp2|float16|p512@12800|d57x16384|ps16", "llama-3-8b|float16|p512@8192|d36x12288|ps16",
    "llama-3-8b-tp4|float16|p512@15360|d102x20480|ps16", "llama-3-8b-tp4|float16|p2048@8192|d171x12288|ps16",
    "yi-6b-tp2|float16|p1024@8192|d167x12288|ps16",
]
_KEPT_IN_TABLE_ONLY = [
    "llama-3-8b-tp2|float16|p2048@4096|d129x8192|ps16", "yi-6b-tp2|float16|p1024@8192|d176x12288|ps16",
    "yi-6b-tp4|float16|p2048@6144|d197x20480|ps16", "llama-3-8b-tp2|float16|p512@10752|d48x20480|ps16",
    "llama-3-8b|float16|p512@6656|d28x16384|ps16", "llama-3-8b-tp2|float16|p512@11776|d51x20480|ps16",
    "llama-3-8b-tp4|float16|p1024@13312|d128x16384|ps16", "yi-6b-tp4|float16|p1024@17408|d219x20480|ps16",
    "yi-6b|float16|p512@8192|d81x12288|ps16", "yi-6b-tp2|float16|p512@11264|d94x20480|ps16",
    "yi-6b-tp2|float16|p1024@6144|d105x20480|ps16", "llama-3-8b|float16|p2048@2048|d109x4096|ps16",
    "yi-6b|float16|p512@6656|d61x16384|ps16", "yi-6b-tp2|float16|p512@12288|d105x20480|ps16",
]

SELECTIONS = {
    # every kept batch where the CTAs-per-SM rule of then (threshold 0.4) picked 4 CTAs per SM
    "pod_ctas_ds3": dict(kept=True, dominance_below=0.4, add=_KEPT_AT_8CF806A_ONLY, drop=_KEPT_IN_TABLE_ONLY,
                         order=["model", "prefill_len", "prefill_kv_len", "decode_batch", "decode_ctx"]),
    # every kept batch where POD runs 4 CTAs per SM with the rule's threshold 0.25 (the default since)
    "pod_policy_cps4": dict(kept=True, dominance_below=0.25,
                            order=["model", "prefill_len", "prefill_kv_len", "decode_ctx", "decode_batch"]),
}


def prefill_dominance(row) -> float:
    """Prefill FLOPs over (machine balance x decode bytes) of one table row (inf without decodes)."""
    from kernels.workload import BatchSpec, ModelShape

    model = ModelShape(name=row.model, q_heads=int(row.q_heads), kv_heads=int(row.kv_heads),
                       head_dim=int(row.head_dim))
    spec = BatchSpec(model=model, dtype=row.dtype, prefill_len=int(row.prefill_len),
                     prefill_kv_len=int(row.prefill_kv_len), decode_batch=int(row.decode_batch),
                     decode_ctx=int(row.decode_ctx), page_size=int(row.page_size))
    decode_bytes = spec.bytes_moved()["decode"] if spec.has_decode else 0
    return spec.flops()["prefill"] / (MACHINE_BALANCE * decode_bytes) if decode_bytes else float("inf")


def select(name: str, table: pd.DataFrame | None = None) -> list[dict]:
    """The configs (dicts of CONFIG_FIELDS) the rule of study ``name`` picks from the figure-11 table."""
    rule = SELECTIONS[name]
    t = pd.read_csv(TABLE) if table is None else table
    keep = pd.Series(True, index=t.index)
    if rule.get("kept"):
        keep &= t["kept"].astype(bool)
    if "dominance_below" in rule:
        keep &= pd.Series([prefill_dominance(r) < rule["dominance_below"] for r in t.itertuples()], index=t.index)
    keep &= ~t["row_key"].isin(rule.get("drop", []))
    keep |= t["row_key"].isin(rule.get("add", []))
    rows = t[keep].sort_values(rule["order"], kind="stable")
    return [{f: (str(v) if f == "model" else int(v)) for f, v in zip(CONFIG_FIELDS, r)}
            for r in rows[list(CONFIG_FIELDS)].itertuples(index=False)]


def yaml_path(name: str) -> Path:
    return ROOT / "experiments" / "studies" / f"{name}.yaml"


def configs_block(configs: list[dict]) -> str:
    return "configs:\n" + "".join(
        "  - {" + ", ".join(f"{f}: {c[f]}" for f in CONFIG_FIELDS) + "}\n" for c in configs)


def committed_configs(name: str) -> list[dict]:
    import yaml

    with open(yaml_path(name)) as f:
        return yaml.safe_load(f)["configs"]


def write(name: str, configs: list[dict]) -> None:
    """Replace the configs: block (from 'configs:' to the next top-level key) of the study's YAML."""
    path = yaml_path(name)
    text = path.read_text()
    new, n = re.subn(r"^configs:\n(?:[ #].*\n)*", lambda m: configs_block(configs), text, count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"{path}: no top-level configs: block")
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(SELECTIONS))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="compare with the committed YAML")
    g.add_argument("--write", action="store_true", help="rewrite the committed YAML's configs: block")
    a = p.parse_args(argv)
    configs = select(a.name)
    if a.write:
        write(a.name, configs)
    elif a.check:
        ok = configs == committed_configs(a.name)
        print(f"{a.name}: {len(configs)} batches, {'equal to' if ok else 'DIFFERENT from'} {yaml_path(a.name)}")
        return 0 if ok else 1
    else:
        sys.stdout.write(configs_block(configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
