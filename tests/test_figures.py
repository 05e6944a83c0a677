"""figures.plot draws non-empty PNGs for figure11 and the generic plot from aggregated tables."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import main as aggregate
from figures import figure1
from figures.plot import main as plot
from figures.utilization import source_note

METHODS = {"FA_prefill": 1.0, "FA_decode": 1.0, "FI_prefill_auto": 0.6, "FI_decode": 0.9,
           "FA_Streams": 1.9, "FI_Batched_fa2": 2.1, "FI_POD": 1.5, "POD": 1.4}


def synthetic_raw(n_rows=40, seed=0) -> pd.DataFrame:
    """Plausible times for n_rows hybrid batches of one H100 run."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_rows):
        scale = rng.uniform(0.5, 2.0)
        for method, base in METHODS.items():
            lines.append({"row_key": f"r{i}", "method": method, "status": "ok",
                          "median_ms": base * scale * rng.uniform(0.8, 1.25),
                          "experiment": "figure11", "model": "llama-3-8b-tp2", "q_heads": 16, "kv_heads": 4,
                          "head_dim": 128, "dtype": "float16", "prefill_len": 1024, "prefill_kv_len": 1024 * (1 + i % 4),
                          "chunk_idx": i % 4, "decode_batch": 64, "decode_ctx": 8192, "page_size": 16,
                          "group_key": f"g{i // 4}", "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132})
    return pd.DataFrame(lines)


@pytest.mark.parametrize("plot_name", ["figure11", "generic"])
def test_plot_writes_png(tmp_path, plot_name):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"name: figure11\nplot: {plot_name}\nbaseline: FA_Serial\n")  # the raw lines' experiment
    raw = tmp_path / "shard-0-of-1.csv"
    synthetic_raw().to_csv(raw, index=False)
    table, summary, png = tmp_path / "t.csv", tmp_path / "s.csv", tmp_path / "fig" / f"{plot_name}.png"
    aggregate(["--experiment", str(experiment), "--raw", str(raw), "--out-table", str(table),
               "--out-summary", str(summary)])
    plot(["--experiment", str(experiment), "--table", str(table), "--summary", str(summary), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_replot_leaves_an_unchanged_png_alone(tmp_path, capsys):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("name: figure11\nplot: generic\nbaseline: FA_Serial\n")
    raw = tmp_path / "shard-0-of-1.csv"
    synthetic_raw(n_rows=8).to_csv(raw, index=False)
    table, summary, png = tmp_path / "t.csv", tmp_path / "s.csv", tmp_path / "fig.png"
    aggregate(["--experiment", str(experiment), "--raw", str(raw), "--out-table", str(table),
               "--out-summary", str(summary)])
    args = ["--experiment", str(experiment), "--table", str(table), "--summary", str(summary), "--out", str(png)]
    plot(args)
    data = png.read_bytes()
    assert b"Software" not in data  # no matplotlib version in the file: same figure, same bytes
    inode = png.stat().st_ino
    plot(args)
    assert png.read_bytes() == data and png.stat().st_ino == inode  # not rewritten
    assert capsys.readouterr().out.splitlines()[-1] == f"unchanged (same pixels): {png}"


def test_machine_line_says_how_many_batches_the_filter_kept():
    from figures.common import machine_line

    t = pd.DataFrame({"gpu_name": ["NVIDIA H200"] * 3, "sm_count": [132] * 3, "kept": [True, False, True]})
    assert machine_line(t) == "NVIDIA H200 (132 SMs), 2 of 3 hybrid batches kept"
    assert machine_line(t.assign(kept=True)) == "NVIDIA H200 (132 SMs), 3 hybrid batches"


def test_plotted_methods_fall_back_to_the_parts_when_nothing_else_was_timed():
    """A study of prefills alone (every method a part) plots its parts, not an empty axis."""
    from figures.common import plotted_methods
    parts = pd.DataFrame({"method": ["OURS_prefill", "FI_prefill_auto", "OURS_prefill_hopper", "X"],
                          "role": ["baseline", "part", "part", "part"], "n": [27, 27, 27, 0]})
    assert sorted(plotted_methods(parts)) == ["FI_prefill_auto", "OURS_prefill_hopper"]
    mixed = pd.concat([parts, pd.DataFrame({"method": ["POD"], "role": ["method"], "n": [27]})])
    assert plotted_methods(mixed) == ["POD"]


def test_figure1_hatches_the_bars_without_hardware_counters():
    shipped = Path("results/h200/tables/figure1.csv")
    if not shipped.exists():
        pytest.skip("no shipped tables")
    table = pd.read_csv(shipped)
    assert table["ncu_sm__throughput_POD"].notna().any() and "ncu_sm__throughput_FI_POD" not in table
    fig = figure1.plot(table, pd.DataFrame(), {})
    c0 = next(ax for ax in fig.axes if ax.get_title().startswith("C0"))
    labels = [t.get_text() for t in c0.get_xticklabels()]
    hatched = [labels[i % len(labels)] for i, p in enumerate(c0.patches) if p.get_hatch()]
    assert hatched == ["FI_POD", "FI_POD"]            # its compute and memory bars; the profiled ones plain
    assert "hatched bars, no hardware counters" in fig._suptitle.get_text()
    assert "hatched" not in source_note(["ncu", "achieved"])          # a figure that does not hatch
