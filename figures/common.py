"""Pieces shared by the plot modules: which methods to draw, in what order, and the title line."""
from __future__ import annotations

import pandas as pd

FONT_SIZE = 13

# Peers first, then our kernels; anything else present goes after these, in table order.
METHOD_ORDER = ["FA_BackToBack", "FA_Streams", "FI_Serial", "FI_Serial_fa2", "FI_Batched_fa2", "FI_Batched_auto", "FI_POD",
                "HFuse", "OURS_Serial", "OURS_Streams", "OURS_CTA", "POD"]

BASELINE_LABELS = {"FA_Serial": "FlashAttention-2 serial"}


def plotted_methods(summary: pd.DataFrame) -> list[str]:
    """Methods to compare against the baseline (not the baseline, not serial parts), with kept rows."""
    rows = summary[(summary["role"] == "method") & (summary["n"] > 0)]
    present = list(rows["method"])
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


def machine_line(table: pd.DataFrame) -> str:
    """'GPU (N SMs), K hybrid batches' for a title; K counts the rows kept by the filter."""
    gpus = ", ".join(sorted(map(str, table["gpu_name"].dropna().unique()))) or "unknown GPU"
    sms = ", ".join(str(int(s)) for s in sorted(table["sm_count"].dropna().unique()))
    sm_text = f" ({sms} SMs)" if sms else ""
    return f"{gpus}{sm_text}, {int(table['kept'].sum())} hybrid batches"


def baseline_label(meta: dict) -> str:
    """Readable name of the baseline for axis labels."""
    return BASELINE_LABELS.get(meta["baseline"], meta["baseline"])
