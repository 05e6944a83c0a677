"""Default plot of an experiment: median speedup per method over the baseline, min-max whiskers."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE, baseline_label, machine_line, plotted_methods


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Bar per method at its median speedup over kept rows, whiskers from min to max."""
    methods = plotted_methods(summary)
    rows = summary.set_index("method").loc[methods]
    med = rows["median_speedup"].to_numpy(dtype=float)
    whiskers = np.vstack([med - rows["min_speedup"].to_numpy(dtype=float),
                          rows["max_speedup"].to_numpy(dtype=float) - med])

    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(methods) + 3.0), 6.0), layout="constrained")
        x = np.arange(len(methods))
        ax.bar(x, med, yerr=whiskers, capsize=5, color="tab:blue", alpha=0.75)
        for xi, m in zip(x, med):
            # beside the whisker, not on it
            ax.annotate(f"{m:.2f}x", (xi, m), xytext=(7, 3), textcoords="offset points", ha="left",
                        va="bottom", fontsize=FONT_SIZE - 2)
        ax.axhline(1.0, color="black", linewidth=1.0)
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_ylabel(f"Speedup over {baseline_label(meta)}\n(bar: median, whiskers: min and max)")
        ax.grid(axis="y", alpha=0.3)
        # two lines: with few methods the figure is narrow and one line would run off its edge
        ax.set_title(f"{meta['name']}\n{machine_line(table)}")
    return fig
