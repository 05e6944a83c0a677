"""Utilization of a method's kernels, from Nsight Compute counters when the table has them (the
experiment's profile: section) and otherwise from useful work over measured time."""
from __future__ import annotations

import pandas as pd

NCU_COMPUTE = "ncu_sm__throughput"
NCU_MEMORY = "ncu_dram__throughput"


def utilization(table: pd.DataFrame, method: str) -> tuple[pd.Series, pd.Series, str]:
    """(compute %, memory %, source) per row of ``table`` for ``method``. Source 'ncu' means
    sm__throughput and dram__throughput (% of peak sustained); 'achieved' means useful FLOPs and
    bytes per second over the timed median, as % of the GPU's datasheet peaks."""
    c, m = f"{NCU_COMPUTE}_{method}", f"{NCU_MEMORY}_{method}"
    if c in table and m in table and table[c].notna().any():
        return table[c], table[m], "ncu"
    return table[f"achieved_compute_pct_{method}"], table[f"achieved_memory_pct_{method}"], "achieved"


SOURCE_TEXT = {
    "ncu": "Nsight Compute: sm__throughput and dram__throughput, % of peak",
    "achieved": "no hardware counters: useful FLOP/s and bytes/s over measured time, % of datasheet peak",
}


# a figure that draws both kinds of bar side by side (figure 1) hatches those without hardware counters
HATCH = {"ncu": None, "achieved": "//"}


def source_note(sources, hatched: bool = False) -> str:
    """Where the utilization numbers of a figure come from, a line per source; ``hatched``: the
    figure hatches each source's bars with ``HATCH``, and the note says which are hatched."""
    return "\n".join(("hatched bars, " if hatched and HATCH[s] else "") + SOURCE_TEXT[s] for s in sorted(set(sources)))
