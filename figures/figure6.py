"""Figure 6: per-chunk attention time over the chunks of one prompt, one panel per decode batch."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from figures.common import FONT_SIZE, machine_line

# (method, style): the paper's four first, then our serial launches and FlashInfer when measured.
LINES = [("FA_Serial", "k-"), ("FA_Streams", "-"), ("HFuse", "-"), ("POD", "-"),
         ("OURS_Serial", ":"), ("FI_Serial", "--"), ("FI_POD", "--")]


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """ms per chunk index for each method; the SM-filling and the one-request-more batches side by side."""
    batches = sorted(table["decode_batch"].unique())
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 5.5), layout="constrained",
                                 sharey=True, squeeze=False)
        for ax, bs in zip(axes[0], batches):
            t = table[table["decode_batch"] == bs].sort_values("chunk_idx")
            for method, style in LINES:
                col = f"ms_{method}"
                if col in t and t[col].notna().any():
                    ax.plot(t["chunk_idx"], t[col], style, label=method, linewidth=1.8)
            ax.set_title(f"decode batch {int(bs)} x {int(t['decode_ctx'].iloc[0])}")
            ax.set_xlabel(f"prefill chunk index ({int(t['prefill_len'].iloc[0])} tokens each)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("attention time per layer (ms)")
        axes[0][-1].legend(fontsize=FONT_SIZE - 2)
        fig.suptitle(f"{table['model'].iloc[0]}: {machine_line(table)}")
    return fig
