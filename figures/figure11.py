"""Figure 11: distribution of each method's speedup over FlashAttention-2 serial across hybrid batches."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE, baseline_label, machine_line, plotted_methods


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Left: a violin per method of (speedup - 1) in %, medians marked and printed. Right: the CDF
    of each method's speedup. Kept rows only (the paper's filter)."""
    kept = table[table["kept"]]
    methods = plotted_methods(summary)
    data = [(kept[f"speedup_{m}"].dropna().to_numpy() - 1.0) * 100.0 for m in methods]
    base = baseline_label(meta)

    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, (ax, cdf) = plt.subplots(1, 2, figsize=(max(12.0, 1.3 * len(methods) + 7.0), 6.5),
                                      gridspec_kw={"width_ratios": [max(len(methods), 3), 3]},
                                      layout="constrained")
        positions = np.arange(1, len(methods) + 1)
        if methods:
            parts = ax.violinplot(data, positions=positions, showextrema=True, widths=0.8)
            for body in parts["bodies"]:
                body.set_alpha(0.55)
        ax.axhline(0.0, color="black", linewidth=1.0)
        medians = [float(np.median(d)) for d in data]
        ax.scatter(positions, medians, marker="o", color="white", edgecolor="black", zorder=3, s=40)
        for x, med in zip(positions, medians):
            ax.annotate(f"{med:+.1f}%", (x, med), xytext=(8, 0), textcoords="offset points",
                        va="center", fontsize=FONT_SIZE - 2)
        ax.set_xticks(positions, methods, rotation=30, ha="right")
        ax.set_ylabel(f"Speedup over {base} (%)")
        ax.grid(axis="y", alpha=0.3)

        # more methods than the default 10-colour cycle: a 20-colour map keeps every line distinct
        tab20 = plt.get_cmap("tab20").colors
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the ten dark shades, then the light ones
        colors = [tab20[order[i % 20]] for i in range(len(methods))] if len(methods) > 10 else [None] * len(methods)
        for m, d, c in zip(methods, data, colors):
            speedup = np.sort(d / 100.0 + 1.0)
            cdf.step(speedup, np.arange(1, len(speedup) + 1) / len(speedup), where="post", label=m, color=c)
        cdf.axvline(1.0, color="black", linewidth=1.0)
        cdf.set_xlabel(f"Speedup over {base}")
        cdf.set_ylabel("Fraction of hybrid batches")
        cdf.set_ylim(0, 1.02)
        cdf.grid(alpha=0.3)
        if methods:
            cdf.legend(fontsize=FONT_SIZE - 3, loc="lower right")

        fig.suptitle(f"{meta['name']}: {machine_line(table)}")
    return fig
