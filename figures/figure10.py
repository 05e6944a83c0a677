"""Figure 10: decode-only compute and memory utilization against the decode query-row tile."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pandas as pd

from figures.common import FONT_SIZE, machine_line
from figures.utilization import source_note, utilization

TILE = re.compile(r"_q(\d+)$")
TENSOR_PIPE = "ncu_sm__pipe_tensor_op_hmma_cycles_active"


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Two panels, compute % and memory %, against the tile's query rows, a line per decode batch."""
    methods = sorted((m for m in (c.removeprefix("ms_") for c in table.columns if c.startswith("ms_"))
                      if TILE.search(m)), key=lambda m: int(TILE.search(m).group(1)))
    tiles = [int(TILE.search(m).group(1)) for m in methods]
    sources = []
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, (comp, mem) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
        for _, row in table.sort_values("decode_batch").iterrows():
            one = pd.DataFrame([row])
            cs, ms = [], []
            for m in methods:
                c, b, src = utilization(one, m)
                cs.append(float(c.iloc[0]))
                ms.append(float(b.iloc[0]))
                if pd.notna(cs[-1]):        # a failed tile has no numbers, whatever their source
                    sources.append(src)
            label = f"batch {int(row['decode_batch'])}"
            line, = comp.plot(tiles, cs, "o-", label=label)
            mem.plot(tiles, ms, "o-", label=label)
            tensor = [row.get(f"{TENSOR_PIPE}_{m}", float("nan")) for m in methods]
            if any(pd.notna(v) for v in tensor):   # a failed tile leaves a gap in the line
                comp.plot(tiles, tensor, "x--", color=line.get_color(), label=f"{label}: tensor pipe (ncu)")
        for ax, what in ((comp, "compute"), (mem, "memory bandwidth")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(tiles, [str(t) for t in tiles])
            ax.set_xlabel("decode query-row tile (rows)")
            ax.set_ylabel(f"{what} utilization (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=FONT_SIZE - 2)
        first = table.iloc[0]
        fig.suptitle(f"{first['model']} decode, context {int(first['decode_ctx'])}: {machine_line(table)}\n"
                     f"{source_note(sources)}", fontsize=FONT_SIZE - 1)
    return fig
