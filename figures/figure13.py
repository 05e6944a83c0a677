"""Figure 13: POD with 2 vs 4 CTAs per SM, each cell normalized to the better of the two."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE, machine_line

CONFIGS = [("POD_2cta", "2 CTAs per SM"), ("POD_4cta", "4 CTAs per SM")]


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Two heatmaps (context x decode batch) of time / min(2-CTA time, 4-CTA time)."""
    best = table[[f"ms_{c}" for c, _ in CONFIGS]].min(axis=1)
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
        for ax, (col, title) in zip(axes, CONFIGS):
            grid = (table.assign(rel=table[f"ms_{col}"] / best)
                    .pivot_table(index="decode_ctx", columns="decode_batch", values="rel"))
            values = grid.to_numpy(dtype=float)
            im = ax.imshow(values, cmap="Reds", vmin=1.0, vmax=max(1.2, np.nanmax(values)), origin="lower",
                           aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=FONT_SIZE - 2)
            ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns])
            ax.set_yticks(range(grid.shape[0]), [str(int(r)) for r in grid.index])
            ax.set_xlabel("decode batch size")
            ax.set_ylabel("context length (full prefill + decodes)")
            ax.set_title(title)
        fig.colorbar(im, ax=axes, label="time / best of the two")
        fig.suptitle(f"{table['model'].iloc[0]}: {machine_line(table)}")
    return fig
