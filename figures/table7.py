"""Table 7: FA_Serial against POD with vanilla and limited prefill splits, last chunks of a prompt."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE, machine_line

SERIES = [("FA_Serial", "FA_Serial", "tab:gray"), ("OURS_Serial", "our serial", "tab:olive"),
          ("POD_vanilla_split", "POD, vanilla split", "tab:orange"),
          ("POD_limited_split", "POD, limited split", "tab:blue")]


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Grouped bars of ms per chunk, each POD bar labelled with its time relative to FA_Serial."""
    t = table.sort_values("chunk_idx")
    series = [s for s in SERIES if f"ms_{s[0]}" in t]
    x = np.arange(len(t))
    width = 0.8 / max(len(series), 1)
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
        for i, (col, label, color) in enumerate(series):
            ms = t[f"ms_{col}"].to_numpy(dtype=float)
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ms, width, label=label, color=color)
            if col != "FA_Serial" and "ms_FA_Serial" in t:
                rel = ms / t["ms_FA_Serial"].to_numpy(dtype=float)
                ax.bar_label(bars, [f"{r:.2f}x" for r in rel], fontsize=FONT_SIZE - 4, padding=2)
        ax.set_xticks(x, [f"chunk {int(c)}" for c in t["chunk_idx"]])
        ax.set_ylabel("attention time per layer (ms)")
        first = t.iloc[0]
        ax.set_title(f"{first['model']}, prefill {int(first['prefill_len'])} tokens per chunk, "
                     f"{int(first['decode_batch'])} decodes x {int(first['decode_ctx'])}\n{machine_line(table)}",
                     fontsize=FONT_SIZE)
        # a band above the tallest bar for the legend, which otherwise covers the last chunk's bars
        top = np.nanmax([t[f"ms_{col}"].max() for col, _, _ in series])
        ax.set_ylim(0, top * 1.3)
        ax.legend(fontsize=FONT_SIZE - 2, loc="upper center", ncol=len(series))
        ax.grid(axis="y", alpha=0.3)
    return fig
