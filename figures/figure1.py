"""Figure 1: compute and memory utilization of prefill, decode and fused kernels; runtimes of the
hybrid batches C0-C2 normalized to FlashAttention prefill + decode."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE, machine_line
from figures.utilization import HATCH, source_note, utilization

HYBRID_KERNELS = ["FA_prefill", "FA_decode", "FI_prefill_auto", "FI_decode", "FI_POD", "POD"]
RUNTIME_METHODS = ["FA_Serial", "FI_Serial", "FI_POD", "OURS_Serial", "POD"]


def _bars(ax, labels, compute, memory, title, sources):
    """Compute and memory bars per label; ``sources`` (one per label or one for all) sets each hatch."""
    x = np.arange(len(labels))
    hatch = [HATCH[s] for s in (sources if isinstance(sources, list) else [sources] * len(labels))]
    ax.bar(x - 0.2, compute, 0.4, label="compute", color="tab:red", hatch=hatch, edgecolor="white")
    ax.bar(x + 0.2, memory, 0.4, label="memory bandwidth", color="tab:blue", hatch=hatch, edgecolor="white")
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=FONT_SIZE - 3)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=FONT_SIZE)
    ax.grid(axis="y", alpha=0.3)


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Left: utilization bars (prefill alone by context, decode alone by batch, each kernel on each
    hybrid batch). Right: hybrid batch runtimes over FA_Serial."""
    prefill = table[(table["decode_batch"] == 0) & (table["prefill_len"] > 0)].sort_values("prefill_len")
    decode = table[(table["prefill_len"] == 0) & (table["decode_batch"] > 0)].sort_values("decode_batch")
    hybrid = table[(table["prefill_len"] > 0) & (table["decode_batch"] > 0)].sort_values("prefill_len")
    names = [f"C{i}" for i in range(len(hybrid))]
    sources = []
    with plt.rc_context({"font.size": FONT_SIZE}):
        top = ["prefill", "decode", *names]
        fig, axd = plt.subplot_mosaic([top, ["runtime"] * len(top)], figsize=(5 * len(top), 11),
                                      layout="constrained", height_ratios=[1.2, 1])
        c, m, s = utilization(prefill, "FA_prefill")
        sources.append(s)
        _bars(axd["prefill"], [f"{int(v) // 1024}K" for v in prefill["prefill_len"]], c, m,
              "FA prefill alone (context)", s)
        c, m, s = utilization(decode, "FA_decode")
        sources.append(s)
        _bars(axd["decode"], [f"bs {int(v)}" for v in decode["decode_batch"]], c, m,
              f"FA decode alone (context {int(decode['decode_ctx'].iloc[0]) if len(decode) else 0})", s)
        axd["prefill"].set_ylabel("utilization (% of peak)")
        axd["prefill"].legend(fontsize=FONT_SIZE - 3, loc="upper left")
        for name, (_, row) in zip(names, hybrid.iterrows()):
            one = pd.DataFrame([row])
            kernels = [k for k in HYBRID_KERNELS if f"ms_{k}" in one]
            cs, ms, ss = [], [], []
            for k in kernels:
                c, m, s = utilization(one, k)
                cs.append(float(c.iloc[0]))
                ms.append(float(m.iloc[0]))
                ss.append(s)
            sources += ss
            _bars(axd[name], kernels, cs, ms, f"{name}: prefill {int(row['prefill_len'])}/{int(row['prefill_kv_len'])}, "
                                             f"{int(row['decode_batch'])}x{int(row['decode_ctx'])}", ss)

        ax = axd["runtime"]
        methods = [k for k in RUNTIME_METHODS if f"ms_{k}" in hybrid]
        width = 0.8 / max(len(methods), 1)
        x = np.arange(len(hybrid))
        for i, k in enumerate(methods):
            rel = (hybrid[f"ms_{k}"] / hybrid["ms_FA_Serial"]).to_numpy(dtype=float)
            bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, rel, width, label=k)
            ax.bar_label(bars, [f"{v:.2f}" for v in rel], fontsize=FONT_SIZE - 4, padding=2)
        ax.set_xticks(x, names)
        ax.set_ylabel("runtime / FA_Serial")
        ax.set_title("Hybrid batches: runtime normalized to FlashAttention prefill + decode (serial)",
                     fontsize=FONT_SIZE)
        ax.legend(fontsize=FONT_SIZE - 3, ncols=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.08))
        ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{table['model'].iloc[0]}: {machine_line(table)}\n{source_note(sources, hatched=True)}", fontsize=FONT_SIZE - 1)
    return fig
