"""Pieces shared by the plot modules: which methods to draw, in what order, and the title line."""
from __future__ import annotations

import pandas as pd

from kernels.catalogue import PLOT_ORDER, plot_order

FONT_SIZE = 13

# Peers first, then our kernels; anything else present goes after these, in table order
# (kernels/catalogue.py, beside the rest of what a method is).
METHOD_ORDER = list(PLOT_ORDER)

BASELINE_LABELS = {"FA_Serial": "FlashAttention-2 serial"}


def plotted_methods(summary: pd.DataFrame) -> list[str]:
    """Methods to compare against the baseline (not the baseline, not serial parts), with kept rows;
    the parts themselves where the experiment has nothing else (e.g. batches of a prefill alone)."""
    timed = summary[summary["n"] > 0]
    rows = timed[timed["role"] == "method"]
    if rows.empty:
        rows = timed[timed["role"] == "part"]
    return plot_order(rows["method"])


def machine_line(table: pd.DataFrame) -> str:
    """'GPU (N SMs), K hybrid batches' for a title, K the rows kept by the filter; 'K of M hybrid
    batches kept' when the filter dropped some, so that a partial or filtered sweep says so."""
    gpus = ", ".join(sorted(map(str, table["gpu_name"].dropna().unique()))) or "unknown GPU"
    sms = ", ".join(str(int(s)) for s in sorted(table["sm_count"].dropna().unique()))
    sm_text = f" ({sms} SMs)" if sms else ""
    kept, total = int(table["kept"].sum()), len(table)
    batches = f"{kept} hybrid batches" if kept == total else f"{kept} of {total} hybrid batches kept"
    return f"{gpus}{sm_text}, {batches}"


def baseline_label(meta: dict) -> str:
    """Readable name of the baseline for axis labels."""
    return BASELINE_LABELS.get(meta["baseline"], meta["baseline"])
