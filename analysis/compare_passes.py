"""Two passes of one experiment over the same batches: how often a ratio criterion holds in each
pass and in both (e.g. POD slower than OURS_Serial by more than 2%), and how far each method's own
time moved between the passes, which is the noise such a criterion has to clear.

    python -m analysis.compare_passes FIRST_DIR SECOND_DIR --ratio POD_measured/OURS_Serial --above 1.02

Each folder's top-level CSVs are raw runner rows (experiments/run.py); only ``ok`` rows of batches
present in both passes count.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def load_pass(folder) -> pd.DataFrame:
    """Median time (ms) per batch (row_key) and method of one pass."""
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no CSV files in {folder}")
    rows = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    ok = rows[rows["status"] == "ok"]
    return ok.pivot_table(index="row_key", columns="method", values="median_ms", aggfunc="median")


def compare(first: pd.DataFrame, second: pd.DataFrame, num: str, den: str, above: float,
            noise: float = 0.02) -> dict:
    """Counts of batches where ``num / den > above`` in each pass, in both and in one only, plus
    each method's share of batches whose time moved by more than ``noise`` between the passes."""
    for m in (num, den):
        if m not in first or m not in second:
            raise KeyError(f"method {m!r} is missing from a pass (have {sorted(set(first) & set(second))})")
    keys = first.index.intersection(second.index)
    a, b = first.loc[keys], second.loc[keys]
    ra, rb = a[num] / a[den], b[num] / b[den]
    hit_a, hit_b = ra > above, rb > above
    out = {"batches": int(len(keys)), "criterion": f"{num}/{den} > {above}",
           "first": int(hit_a.sum()), "second": int(hit_b.sum()), "both": int((hit_a & hit_b).sum()),
           "first_only": int((hit_a & ~hit_b).sum()), "second_only": int((~hit_a & hit_b).sum())}
    for m in sorted(set(a.columns) & set(b.columns)):
        moved = (b[m] / a[m] - 1).dropna()
        out[f"{m}_moved_over_{noise:g}"] = float((moved.abs() > noise).mean())
        out[f"{m}_second_over_first_p5"] = float(1 + moved.quantile(0.05))
        out[f"{m}_second_over_first_median"] = float(1 + moved.median())
        out[f"{m}_second_over_first_p95"] = float(1 + moved.quantile(0.95))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--ratio", required=True, help="NUM/DEN: two methods of the runs")
    ap.add_argument("--above", type=float, default=1.02)
    ap.add_argument("--noise", type=float, default=0.02, help="a method's move between passes counted as noise above this")
    a = ap.parse_args(argv)
    if a.ratio.count("/") != 1:
        ap.error("--ratio takes NUM/DEN, two method names")
    num, den = a.ratio.split("/")
    res = compare(load_pass(a.first), load_pass(a.second), num, den, a.above, a.noise)
    for k, v in res.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
