"""analysis.aggregate on a hand-made raw CSV whose speedups are known exactly."""
import io
import math

import pandas as pd
import pytest

from analysis.aggregate import build_table, load_raw, main, method_role, summarize
from analysis.meta import read_meta

WORKLOAD = "figure11,llama-3-8b-tp2,16,4,128,float16,512,{kv},0,8,4096,16,g0,NVIDIA H100 80GB HBM3,132"
HEADER = ("row_key,method,status,median_ms,experiment,model,q_heads,kv_heads,head_dim,dtype,prefill_len,"
          "prefill_kv_len,chunk_idx,decode_batch,decode_ctx,page_size,group_key,gpu_name,sm_count")

# (row_key, method, status, median_ms); kv length 1024 for every row.
LINES = [
    # r1: FA_Serial 4, FI_Serial 3, kept (1 and 3 >= 0.8)
    ("r1", "FA_prefill", "ok", 1.0), ("r1", "FA_decode", "ok", 3.0),
    ("r1", "FI_prefill_auto", "ok", 0.5), ("r1", "FI_decode", "ok", 2.5),
    ("r1", "FI_POD", "ok", 2.0), ("r1", "POD", "ok", 2.5), ("r1", "FA_Streams", "ok", 5.0),
    # r2: prefill is 10% of FA_Serial: filtered out
    ("r2", "FA_prefill", "ok", 0.5), ("r2", "FA_decode", "ok", 4.5),
    ("r2", "FI_prefill_auto", "ok", 0.5), ("r2", "FI_decode", "ok", 4.0),
    ("r2", "FI_POD", "ok", 0.1), ("r2", "POD", "ok", 2.0), ("r2", "FA_Streams", "ok", 5.0),
    # r3: FI prefill failed its check, FI_POD errored; their (bogus) times must not be used
    ("r3", "FA_prefill", "ok", 2.0), ("r3", "FA_decode", "ok", 2.0),
    ("r3", "FI_prefill_auto", "failed_check", 0.001), ("r3", "FI_decode", "ok", 1.0),
    ("r3", "FI_POD", "error", None), ("r3", "POD", "ok", 1.0), ("r3", "FA_Streams", "ok", 4.0),
    # r4: decode exactly 25% of FA_Serial: kept
    ("r4", "FA_prefill", "ok", 3.0), ("r4", "FA_decode", "ok", 1.0),
    ("r4", "FI_prefill_auto", "ok", 1.0), ("r4", "FI_decode", "ok", 1.0),
    ("r4", "FI_POD", "ok", 2.0), ("r4", "POD", "ok", 4.0), ("r4", "FA_Streams", "ok", 2.0),
]


def raw_csv_text(lines):
    body = [f"{k},{m},{s},{'' if t is None else t},{WORKLOAD.format(kv=1024)}" for k, m, s, t in lines]
    return "\n".join([HEADER, *body]) + "\n"


@pytest.fixture
def experiment_yaml(tmp_path):
    path = tmp_path / "figure11.yaml"
    path.write_text("name: figure11\nplot: figure11\nbaseline: FA_Serial\nfilter:\n  min_part_fraction: 0.2\n")
    return path


@pytest.fixture
def raw_paths(tmp_path):
    """The lines split over two shards, as the sweep writes them."""
    paths = []
    for i, part in enumerate((LINES[:14], LINES[14:])):
        p = tmp_path / f"shard-{i}-of-2.csv"
        p.write_text(raw_csv_text(part))
        paths.append(p)
    return paths


@pytest.fixture
def table(raw_paths, experiment_yaml):
    return build_table(load_raw(raw_paths), read_meta(experiment_yaml)).set_index("row_key")


def test_serial_sums_and_speedups(table):
    assert table.loc["r1", "ms_FA_Serial"] == 4.0
    assert table.loc["r1", "ms_FI_Serial"] == 3.0
    assert table.loc["r1", "speedup_POD"] == pytest.approx(4.0 / 2.5)
    assert table.loc["r1", "speedup_FI_Serial"] == pytest.approx(4.0 / 3.0)
    assert table.loc["r1", "speedup_FA_Serial"] == 1.0
    assert table.loc["r3", "speedup_POD"] == 4.0
    assert "ms_FI_Serial_fa2" not in table  # its prefill part was not timed
    assert table.loc["r1", "gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert table.loc["r1", "sm_count"] == 132


def test_filter_flags(table):
    assert table["kept"].to_dict() == {"r1": True, "r2": False, "r3": True, "r4": True}


def test_failed_and_errored_times_not_used(table):
    assert math.isnan(table.loc["r3", "ms_FI_prefill_auto"])
    assert math.isnan(table.loc["r3", "ms_FI_Serial"])
    assert table.loc["r3", "status_FI_Serial"] == "failed_check"
    assert math.isnan(table.loc["r3", "speedup_FI_POD"])
    assert table.loc["r3", "status_FI_POD"] == "error"


def test_best_peer(table):
    assert table["best_peer_ms"].to_dict() == {"r1": 2.0, "r2": 0.1, "r3": 4.0, "r4": 2.0}


def test_no_best_peer_without_all_the_peers(raw_paths, experiment_yaml):
    raw = load_raw(raw_paths)
    partial = build_table(raw[raw["method"] != "FI_POD"], read_meta(experiment_yaml))
    assert partial["best_peer_ms"].isna().all()   # not the fastest of FA_Serial and FI_Serial alone


def test_physical_limit_h100(table):
    # Worked by hand for 16/4 heads, d 128, fp16: prefill 512 over 1024, decode 8 x 4096.
    bytes_moved = (2 * 512 * 16 * 128 + 2 * 1024 * 4 * 128) * 2 + (2 * 8 * 16 * 128 + 2 * 8 * 4096 * 4 * 128) * 2
    flops = 4 * 128 * 16 * (512 * 512 + 512 * 513 // 2) + 4 * 128 * 16 * 8 * 4096
    expected_ms = max(bytes_moved / 3.35e12, flops / 989e12) * 1e3
    assert table.loc["r1", "limit_ms"] == pytest.approx(expected_ms)
    assert table.loc["r1", "limit_fraction_POD"] == pytest.approx(expected_ms / 2.5)


def test_unknown_gpu_gives_nan_and_warns(experiment_yaml):
    text = raw_csv_text(LINES[:7]).replace("NVIDIA H100 80GB HBM3", "Mystery GPU")
    with pytest.warns(UserWarning, match="Mystery GPU"):
        table = build_table(pd.read_csv(io.StringIO(text)), read_meta(experiment_yaml))
    assert table["limit_ms"].isna().all()


def test_cpu_run_without_gpu_name(experiment_yaml):
    text = raw_csv_text(LINES[:7]).replace("NVIDIA H100 80GB HBM3", "")
    with pytest.warns(UserWarning, match="no peak numbers"):
        table = build_table(pd.read_csv(io.StringIO(text)), read_meta(experiment_yaml))
    assert table["limit_ms"].isna().all() and table.loc[0, "speedup_POD"] == 4.0 / 2.5


def test_summary(table, experiment_yaml):
    summary = summarize(table.reset_index(), read_meta(experiment_yaml)).set_index("method")
    pod = summary.loc["POD"]
    assert pod["n"] == 3
    assert pod["mean_speedup"] == pytest.approx((1.6 + 4.0 + 1.0) / 3)
    assert pod["median_speedup"] == pytest.approx(1.6)
    assert (pod["min_speedup"], pod["max_speedup"]) == (1.0, 4.0)
    assert pod["frac_slower"] == 0.0
    assert pod["frac_at_or_below_best_peer"] == pytest.approx(1 / 3)
    assert pod["role"] == "method"
    streams = summary.loc["FA_Streams"]
    assert streams["median_speedup"] == 1.0
    assert streams["frac_slower"] == pytest.approx(1 / 3)
    fi_pod = summary.loc["FI_POD"]
    assert (fi_pod["n"], fi_pod["n_error"], fi_pod["n_failed"]) == (2, 1, 0)
    assert fi_pod["mean_speedup"] == 2.0
    assert (summary.loc["FI_Serial", "n"], summary.loc["FI_Serial", "n_failed"]) == (2, 1)
    assert summary.loc["FI_prefill_auto", "n_failed"] == 1
    assert summary.loc["FA_Serial", "role"] == "baseline"
    assert summary.loc["FA_prefill", "role"] == "part"
    assert summary.loc["FI_prefill_auto", "role"] == "part"
    assert summary.loc["POD", "gpu_name"] == "NVIDIA H100 80GB HBM3"


def test_filter_off_keeps_every_row(raw_paths, tmp_path):
    path = tmp_path / "nofilter.yaml"
    path.write_text("filter: {min_part_fraction: 0}\n")
    assert build_table(load_raw(raw_paths), read_meta(path))["kept"].all()


def test_smoke_overrides(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: e\nplot: figure11\nfilter: {min_part_fraction: 0.3}\n"
                    "smoke: {plot: generic, filter: {min_part_fraction: 0.1}}\n")
    assert read_meta(path) == {"name": "e", "plot": "figure11", "baseline": "FA_Serial", "min_part_fraction": 0.3,
                               "method_of": {}}
    assert read_meta(path, smoke=True)["plot"] == "generic"
    assert read_meta(path, smoke=True)["min_part_fraction"] == 0.1


def test_duplicate_lines_across_shards_rejected(raw_paths):
    with pytest.raises(ValueError, match="duplicate"):
        load_raw([raw_paths[0], raw_paths[0]])


def test_cli_writes_both_csvs(raw_paths, experiment_yaml, tmp_path):
    out_table, out_summary = tmp_path / "t" / "figure11.csv", tmp_path / "t" / "figure11_summary.csv"
    main(["--experiment", str(experiment_yaml), "--raw", *map(str, raw_paths),
          "--out-table", str(out_table), "--out-summary", str(out_summary)])
    assert len(pd.read_csv(out_table)) == 4
    assert set(pd.read_csv(out_summary)["method"]) >= {"POD", "FA_Serial", "FI_Serial"}


def test_labelled_variant_is_judged_by_its_method():
    # a POD variant whose label happens to contain "_decode" still runs the whole batch
    assert method_role("POD_decode_q32", "OURS_Serial", "POD") == "method"
    assert method_role("FA_decode", "FA_Serial") == "part"
    assert method_role("FA_Serial", "FA_Serial") == "baseline"


def test_timing_column_says_how_each_batch_was_timed(table, experiment_yaml):
    """Rows without a `timing` column predate queue_ahead; rows with one give their modes, a batch
    timed two ways lists both, and only ok rows count."""
    from analysis.aggregate import UNRECORDED_TIMING
    from analysis.report import timing_modes

    assert (table["timing"] == UNRECORDED_TIMING).all()
    raw = pd.read_csv(io.StringIO(raw_csv_text(LINES)))
    raw["timing"] = "events+queue_ahead+interleaved"
    raw.loc[(raw.row_key == "r4") & (raw.method == "POD"), "timing"] = "events+interleaved"
    raw.loc[raw.status != "ok", "timing"] = ""
    t = build_table(raw, read_meta(experiment_yaml)).set_index("row_key")
    assert t.loc["r1", "timing"] == t.loc["r3", "timing"] == "events+queue_ahead+interleaved"
    assert t.loc["r4", "timing"] == "events+interleaved; events+queue_ahead+interleaved"
    assert timing_modes(t.reset_index()) == ("`events+queue_ahead+interleaved` (3 batches), "
                                             "`events+interleaved; events+queue_ahead+interleaved` (1 batches)")
    assert timing_modes(table.reset_index()) == f"`{UNRECORDED_TIMING}`"
