"""Draw an experiment's figure from its aggregated table and summary.

    python -m figures.plot --experiment experiments/figure11.yaml --table results/tables/figure11.csv \
        --summary results/tables/figure11_summary.csv --out results/figures/figure11.png

The YAML's ``plot:`` names a module ``figures/<plot>.py`` (default ``generic``) whose
``plot(table, summary, meta)`` returns a matplotlib Figure.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; works without a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.meta import read_meta  # noqa: E402

DPI = 150


def render(meta: dict, table: pd.DataFrame, summary: pd.DataFrame, out: Path) -> Path:
    """Call ``figures.<meta['plot']>.plot`` and save its figure to ``out``."""
    module = importlib.import_module(f"figures.{meta['plot']}")
    fig = module.plot(table, summary, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="experiment YAML (for plot, baseline, title)")
    ap.add_argument("--table", required=True, type=Path)
    ap.add_argument("--summary", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="apply the experiment's smoke overrides")
    args = ap.parse_args(argv)
    out = render(read_meta(args.experiment, smoke=args.smoke), pd.read_csv(args.table), pd.read_csv(args.summary), args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
