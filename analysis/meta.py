"""The few experiment-YAML fields that analysis and plotting need, read with PyYAML alone.

The full experiment loader (experiments/grid.py) imports torch; aggregation and plotting must also
work on a machine that has only pandas, matplotlib and PyYAML (a reviewer rebuilding figures).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from kernels.catalogue import DEFAULT_BASELINE, DEFAULT_MIN_PART_FRACTION  # noqa: E402  (plain data, no torch)


def read_meta(path: str | Path, smoke: bool = False) -> dict:
    """Return ``name``, ``plot``, ``baseline``, ``min_part_fraction`` and ``method_of`` (label ->
    registered method, for labelled variants) of an experiment, with its
    ``smoke:`` overrides applied when ``smoke`` (``filter`` merged field by field, as the schema says).

    ``min_part_fraction`` 0 turns the filter off.
    """
    path = Path(path)
    doc = yaml.safe_load(path.read_text()) or {}
    filt = doc.get("filter") or {}
    if smoke:
        overrides = doc.get("smoke") or {}
        filt = {**filt, **(overrides.get("filter") or {})}
        doc = {**doc, **overrides}
    return {
        "name": doc.get("name", path.stem),
        "plot": doc.get("plot") or "generic",
        "baseline": doc.get("baseline") or DEFAULT_BASELINE,
        "min_part_fraction": float(filt.get("min_part_fraction", DEFAULT_MIN_PART_FRACTION)),
        "method_of": {m["name"]: m["method"] for m in doc.get("methods") or [] if isinstance(m, dict)},
    }
