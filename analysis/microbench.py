"""Figure-7 raw CSV -> table (per compute iteration count: each variant's time, speedup over
serial, time over the ideal max(memory alone, compute alone)) and per-variant summary.

    python -m analysis.microbench --raw RAW.csv --out-table T.csv --out-summary S.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.atomic import write_csv
from analysis.validate import MICROBENCH, load_checked

FUSED = ["serial", "streams", "intra_thread", "warp_parallel", "cta_parallel", "sm_aware_cta"]


def load_raw(path) -> pd.DataFrame:
    """The raw CSV of experiments.microbench_run, every line checked (file and line named on error)."""
    return load_checked([path], MICROBENCH)


def build_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Wide table, one row per compute_iters; failed verifications stay NaN (never timed)."""
    ok = raw[raw["verified"] == 1]
    wide = ok.pivot(index="compute_iters", columns="variant", values="time_ms_median")
    wide.columns = [f"ms_{c}" for c in wide.columns]
    wide["ms_ideal"] = wide[["ms_memory_only", "ms_compute_only"]].max(axis=1)
    wide["compute_share"] = wide["ms_compute_only"] / (wide["ms_compute_only"] + wide["ms_memory_only"])
    for v in FUSED:
        if f"ms_{v}" in wide:
            wide[f"speedup_{v}"] = wide["ms_serial"] / wide[f"ms_{v}"]
            wide[f"over_ideal_{v}"] = wide[f"ms_{v}"] / wide["ms_ideal"]
    first = raw.groupby("compute_iters")[["gpu_name", "sm_count"]].first()
    failed = raw[raw["verified"] != 1].groupby("compute_iters")["variant"].agg(",".join)
    return wide.join(first).assign(failed_variants=failed).reset_index()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean/min/max speedup over serial and mean time over the ideal."""
    rows = []
    for v in FUSED:
        if f"speedup_{v}" not in table:
            continue
        s, o = table[f"speedup_{v}"].dropna(), table[f"over_ideal_{v}"].dropna()
        rows.append({"variant": v, "n": len(s), "mean_speedup_over_serial": s.mean(), "min_speedup": s.min(),
                     "max_speedup": s.max(), "mean_time_over_ideal": o.mean(), "max_time_over_ideal": o.max()})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, type=Path)
    ap.add_argument("--out-table", required=True, type=Path)
    ap.add_argument("--out-summary", required=True, type=Path)
    args = ap.parse_args(argv)
    # Every raw line is checked (analysis.validate.MICROBENCH) and both tables computed before writing.
    table = build_table(load_raw(args.raw))
    summary = summarize(table)
    for path, frame in ((args.out_table, table), (args.out_summary, summary)):
        print(f"{'wrote' if write_csv(frame, path, index=False) else 'unchanged:'} {path}")


if __name__ == "__main__":
    main()
