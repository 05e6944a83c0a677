"""What a method *is*, in one place, as plain data (no torch, no kernels imported).

The registry (``kernels/registry.py``) holds the timed methods; this module holds what is built from
them and what is read from their names: the phases a method computes, sums of separately timed
parts, the paper's filter, the peers a method is compared with and the order plots draw them in.
Experiments validate their YAML against it, analysis computes with it and figures draw with it,
so all three agree.
"""
from __future__ import annotations

import re

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


# Methods named <family>_prefill[_variant] or <family>_decode[_variant] time one phase only
# (FA_prefill, OURS_decode_hopper); every other method runs the whole hybrid batch.
PHASES = ("prefill", "decode")
_PART_NAME = re.compile(r"_(prefill|decode)(_|$)")


def method_parts(method: str, registered: str | None = None) -> tuple[str, ...]:
    """The phases a method computes, from its registered name (``registered``; a labelled variant
    is judged by the method it runs, not its label) or else its label: FA_prefill -> ('prefill',)."""
    m = _PART_NAME.search(registered or method)
    return (m.group(1),) if m else PHASES


def is_part(method: str, registered: str | None = None) -> bool:
    """True for a method that times one phase only (a part of a derived sum)."""
    return len(method_parts(method, registered)) == 1


# Order in which plots draw the methods they compare with the baseline: peers first, then our
# kernels; methods not listed follow, in table order.
PLOT_ORDER = ("FA_BackToBack", "FA_Streams", "FI_Serial", "FI_Serial_fa2", "FI_Batched_fa2", "FI_Batched_auto",
              "FI_POD", "HFuse", "OURS_Serial", "OURS_Streams", "OURS_CTA", "POD")


def plot_order(methods) -> list:
    """``methods`` in PLOT_ORDER, the unlisted ones after them in their given order."""
    present = list(methods)
    return [m for m in PLOT_ORDER if m in present] + [m for m in present if m not in PLOT_ORDER]
