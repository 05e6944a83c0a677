"""What the analysis needs to know about methods, as plain data (no torch, no kernels imported).

The registry (``kernels/registry.py``) holds the timed methods; this module holds what is built from
them: sums of separately timed parts, the paper's filter and the peers a method is compared with.
Experiments validate their YAML against it and analysis computes with it, so both agree.
"""
from __future__ import annotations

# What an experiment YAML means when it leaves these out.
DEFAULT_BASELINE = "FA_Serial"
DEFAULT_MIN_PART_FRACTION = 0.2  # the paper's figure-11 filter

# Derived methods: sums of separately timed parts, never timed as one call.
DERIVED = {
    "FA_Serial": ("FA_prefill", "FA_decode"),
    "FI_Serial": ("FI_prefill_auto", "FI_decode"),
    "FI_Serial_fa2": ("FI_prefill_fa2", "FI_decode"),
    "OURS_Serial_hopper": ("OURS_prefill_hopper", "OURS_decode_hopper"),
}

# The paper's filter: each FlashAttention part must be at least a fraction of FA_Serial, so that
# batches dominated by one phase (where there is nothing to overlap) do not enter the figure.
FILTER_TOTAL, FILTER_PARTS = "FA_Serial", ("FA_prefill", "FA_decode")

# Fastest existing ways to run a hybrid batch: a row's best peer is the fastest of these.
BEST_PEERS = ("FA_Serial", "FI_Serial", "FI_POD")


def available_methods(timed_labels) -> set:
    """Timed labels plus every derived method whose parts are all timed."""
    timed = set(timed_labels)
    return timed | {d for d, parts in DERIVED.items() if set(parts) <= timed}
