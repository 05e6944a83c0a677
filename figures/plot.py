"""Draw an experiment's figure from its aggregated table and summary.

    python -m figures.plot --experiment experiments/figure11.yaml --table results/tables/figure11.csv \
        --summary results/tables/figure11_summary.csv --out results/figures/figure11.png

The YAML's ``plot:`` names a module ``figures/<plot>.py`` (default ``generic``) whose
``plot(table, summary, meta)`` returns a matplotlib Figure. Experiments with a ``timeline:``
section also pass ``--timeline`` and ``--timeline-summary`` (analysis.timeline's tables), which
reach the plot as ``meta["timeline"]`` and ``meta["timeline_summary"]``.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; works without a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.atomic import save_figure  # noqa: E402
from analysis.meta import read_meta  # noqa: E402

DPI = 150


def render(meta: dict, table: pd.DataFrame, summary: pd.DataFrame, out: Path) -> bool:
    """Call ``figures.<meta['plot']>.plot`` and save its figure to ``out`` (atomically, without
    version or timestamp, and not at all when its pixels did not change: analysis.atomic).
    True when ``out`` was written, False when it already held this image."""
    module = importlib.import_module(f"figures.{meta['plot']}")
    fig = module.plot(table, summary, meta)
    try:
        return save_figure(fig, out, dpi=DPI)
    finally:
        plt.close(fig)


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="experiment YAML (for plot, baseline, title)")
    ap.add_argument("--table", required=True, type=Path)
    ap.add_argument("--summary", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="apply the experiment's smoke overrides")
    ap.add_argument("--timeline", type=Path, help="CTA timeline table of analysis.timeline (optional)")
    ap.add_argument("--timeline-summary", type=Path, help="its per-launch summary (optional)")
    args = ap.parse_args(argv)
    meta = read_meta(args.experiment, smoke=args.smoke)
    for key, path in (("timeline", args.timeline), ("timeline_summary", args.timeline_summary)):
        if path is not None:
            meta[key] = pd.read_csv(path)
    written = render(meta, pd.read_csv(args.table), pd.read_csv(args.summary), args.out)
    print(f"{'wrote' if written else 'unchanged (same pixels):'} {args.out}")


if __name__ == "__main__":
    main()
