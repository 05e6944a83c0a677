"""Figure 7: runtime of each way of fusing a compute-bound and a memory-bound kernel, against the
compute share, with the ideal max(memory alone, compute alone).

    python -m figures.figure7 --table T.csv --out F.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis.atomic import save_figure
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from figures.common import FONT_SIZE  # noqa: E402

LINES = [("serial", "Serial", "k-o"), ("streams", "Streams", "-s"), ("intra_thread", "Intra-thread", "-^"),
         ("warp_parallel", "Warp-parallel (named barriers)", "-v"), ("cta_parallel", "CTA-parallel", "-d"),
         ("sm_aware_cta", "SM-aware CTA-parallel", "-P")]


def plot(table: pd.DataFrame):
    """Runtime normalized to serial (left) and in ms (right) against compute iterations."""
    t = table.sort_values("compute_iters")
    x = t["compute_iters"]
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, (rel, ms) = plt.subplots(1, 2, figsize=(14, 5.5), layout="constrained")
        for col, label, style in LINES:
            if f"ms_{col}" in t:
                rel.plot(x, t[f"ms_{col}"] / t["ms_serial"], style, label=label)
                ms.plot(x, t[f"ms_{col}"], style, label=label)
        rel.plot(x, t["ms_ideal"] / t["ms_serial"], "g--", linewidth=2, label="Ideal max(M, C)")
        ms.plot(x, t["ms_ideal"], "g--", linewidth=2, label="Ideal max(M, C)")
        top = rel.secondary_xaxis("top", functions=(lambda v: v, lambda v: v))
        top.set_xticks(list(x), [f"{s:.0%}" for s in t["compute_share"]], fontsize=FONT_SIZE - 4)
        top.set_xlabel("compute share of serial time", fontsize=FONT_SIZE - 2)
        rel.set_ylabel("runtime / serial")
        ms.set_ylabel("runtime (ms)")
        for ax in (rel, ms):
            ax.set_xlabel("compute iterations per thread")
            ax.grid(alpha=0.3)
        rel.legend(fontsize=FONT_SIZE - 4)
        gpu = ", ".join(sorted(map(str, t["gpu_name"].dropna().unique())))
        sms = ", ".join(str(int(s)) for s in sorted(t["sm_count"].dropna().unique()))
        fig.suptitle(f"Fusing a compute-bound and a memory-bound kernel: {gpu} ({sms} SMs)")
    return fig


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    fig = plot(pd.read_csv(args.table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
