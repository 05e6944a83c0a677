"""The few experiment-YAML fields that analysis and plotting need.

Read by experiments/spec.py, the one reader of experiment YAML, leniently (no schema check) and
without torch: aggregation and plotting must also work on a machine that has only pandas,
matplotlib, PyYAML and jsonschema (a reviewer rebuilding figures).
"""
from __future__ import annotations

from pathlib import Path

from experiments.spec import meta


def read_meta(path: str | Path, smoke: bool = False) -> dict:
    """Return ``name``, ``plot``, ``baseline``, ``min_part_fraction`` and ``method_of`` (label ->
    registered method, for labelled variants) of an experiment, with its ``smoke:`` overrides
    applied when ``smoke`` (``filter`` merged field by field, as the schema says).

    ``min_part_fraction`` 0 turns the filter off.
    """
    return meta(path, smoke=smoke)
