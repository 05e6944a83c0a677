"""Figure 14: POD's 50:50 against proportional CTA scheduling policy as the decode batch grows."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from figures.common import FONT_SIZE, machine_line


def _best(t: pd.DataFrame, prefix: str) -> pd.Series:
    """Per row, the better of the policy's CTA configurations (as the paper took)."""
    cols = [c for c in t.columns if c.startswith(f"ms_{prefix}")]
    return t[cols].min(axis=1)


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """One panel per model: ms against decode batch for each policy, FA_Serial for reference."""
    models = list(dict.fromkeys(table["model"]))
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5.5), layout="constrained",
                                 squeeze=False)
        for ax, model in zip(axes[0], models):
            t = table[table["model"] == model].sort_values("decode_batch")
            bs = t["decode_batch"]
            equal, prop = _best(t, "POD_5050"), _best(t, "POD_proportional")
            ax.plot(bs, equal, "o-", label="50:50")
            ax.plot(bs, prop, "s-", label="Proportional")
            if "ms_FA_Serial" in t:
                ax.plot(bs, t["ms_FA_Serial"], "--", color="gray", label="FA_Serial")
            for b, e, p in zip(bs, equal, prop):
                ax.annotate(f"{e / p:.2f}x", (b, max(e, p)), xytext=(0, 6), textcoords="offset points",
                            ha="center", fontsize=FONT_SIZE - 4)
            ax.set_title(f"{model}, context {int(t['decode_ctx'].iloc[0])}")
            ax.set_xlabel("decode batch size")
            ax.set_ylabel("attention time per layer (ms)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=FONT_SIZE - 2)
        fig.suptitle(f"Scheduling policy (labels: 50:50 time / proportional time); {machine_line(table)}")
    return fig
