"""Bad raw data never turns into a wrong or lost table (issue 15): every raw line is checked before
use (analysis.validate), errors name file and line, and outputs are written atomically and only
when their content changed (analysis.atomic)."""
import os
import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import atomic  # noqa: E402
from analysis.aggregate import load_raw, main  # noqa: E402
from analysis.microbench import load_raw as load_microbench  # noqa: E402
from analysis.timeline import load_ctas  # noqa: E402
from analysis.validate import REQUIRED_RAW_COLUMNS, RawDataError, RawDataWarning  # noqa: E402

COLUMNS = ["row_key", "method", "experiment", "status", "median_ms", "min_ms", "max_ms", "model", "q_heads",
           "kv_heads", "head_dim", "dtype", "prefill_len", "prefill_kv_len", "chunk_idx", "decode_batch",
           "decode_ctx", "page_size", "group_key", "gpu_name", "sm_count"]
HEADER = ",".join(COLUMNS)
WORKLOAD = "llama-3-8b-tp2,16,4,128,float16,512,1024,0,8,4096,16,g0,NVIDIA H100 80GB HBM3,132"
TIMES = {("r1", "FA_prefill"): 1.0, ("r1", "FA_decode"): 3.0, ("r1", "POD"): 2.5,
         ("r2", "FA_prefill"): 2.0, ("r2", "FA_decode"): 2.0, ("r2", "POD"): 2.0}


def line(row_key, method, median="{t}", status="ok", experiment="table7"):
    t = TIMES.get((row_key, method), 1.0)
    median = median.format(t=t)
    return f"{row_key},{method},{experiment},{status},{median},{t * 0.9},{t * 1.1},{WORKLOAD}"


GOOD = [line(k, m) for k, m in TIMES]  # lines 2..7 of the file


def write(path, lines, end="\n"):
    path.write_text("\n".join([HEADER, *lines]) + end)
    return path


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "table7.yaml"
    path.write_text("name: table7\nplot: generic\nbaseline: FA_Serial\nfilter: {min_part_fraction: 0.2}\n")
    return path


def aggregate(experiment, raws, out):
    main(["--experiment", str(experiment), "--raw", *map(str, raws),
          "--out-table", str(out / "table7.csv"), "--out-summary", str(out / "table7_summary.csv")])


def error_of(paths, experiment="table7") -> str:
    with pytest.raises(RawDataError) as info:
        load_raw(paths, experiment)
    return str(info.value)


def test_required_columns_are_the_contract(tmp_path):
    assert REQUIRED_RAW_COLUMNS[:5] == ("row_key", "method", "experiment", "status", "median_ms")
    assert set(REQUIRED_RAW_COLUMNS) <= set(COLUMNS)
    assert len(load_raw([write(tmp_path / "shard-0-of-1.csv", GOOD)], "table7")) == 6


def test_garbage_line(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD, "garbage"])
    assert error_of([raw]) == (f"{raw}:8: 1 field where the header has {len(COLUMNS)} "
                               f"(a partial or garbage line: 'garbage')")


def test_partial_line_in_the_middle(tmp_path):
    cut = GOOD[2][:40]
    raw = write(tmp_path / "shard-0-of-1.csv", [GOOD[0], GOOD[1], cut, *GOOD[3:]])
    assert error_of([raw]).startswith(f"{raw}:4: {cut.count(',') + 1} fields where the header has {len(COLUMNS)} "
                                      f"(a partial or garbage line: ")


def test_line_with_extra_fields(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:5], GOOD[5] + ",extra"])
    assert error_of([raw]).startswith(f"{raw}:7: {len(COLUMNS) + 1} fields where the header has {len(COLUMNS)} (")


def test_truncated_last_line_is_dropped_with_a_warning(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD, line("r3", "POD")[:30]], end="")
    with pytest.warns(RawDataWarning) as record:
        frame = load_raw([raw], "table7")
    assert [str(w.message) for w in record] == [
        f"{raw}:8: dropped the truncated last line (no newline at the end of the file; 8 fields where the "
        f"header has {len(COLUMNS)} (a partial or garbage line: {line('r3', 'POD')[:30]!r}))"]
    assert len(frame) == 6 and "r3" not in set(frame["row_key"])
    assert frame["median_ms"].notna().all()


def test_truncated_inside_a_quote_is_dropped(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD, 'r3,POD,table7,ok,1.0,"{""a'], end="")
    with pytest.warns(RawDataWarning, match=re.escape(f"{raw}:8: dropped the truncated last line")):
        assert len(load_raw([raw], "table7")) == 6


def test_complete_last_line_without_newline_is_kept(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", GOOD, end="")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_raw([raw], "table7")) == 6


def test_negative_median(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:2], line("r1", "POD", median="-1.03"), *GOOD[3:]])
    assert error_of([raw]) == (f"{raw}:4: median_ms '-1.03' on a line with status ok: "
                               f"expected a finite number > 0")


@pytest.mark.parametrize("median", ["", "nan", "inf", "0", "fast"])
def test_missing_or_nan_time_on_an_ok_line(tmp_path, median):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:5], line("r2", "POD", median=median)])
    assert error_of([raw]) == (f"{raw}:7: median_ms {median!r} on a line with status ok: "
                               f"expected a finite number > 0")


def test_bad_min_ms(tmp_path):
    bad = line("r1", "POD").replace(",2.25,", ",-2.25,")
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:2], bad, *GOOD[3:]])
    assert error_of([raw]) == f"{raw}:4: min_ms '-2.25' on a line with status ok: expected a finite number > 0"


def test_failed_line_may_have_no_time(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:5], line("r2", "POD", median="", status="error")])
    assert load_raw([raw], "table7")["status"].tolist()[-1] == "error"


def test_line_of_another_experiment(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD, line("r3", "POD", experiment="figure11")])
    assert error_of([raw]) == (f"{raw}:8: experiment 'figure11', but the experiment analysed is 'table7' "
                               f"(a line of another experiment?)")


def test_file_of_another_experiment_is_named_once(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", GOOD)
    assert error_of([raw], "figure11") == (f"{raw}:2: every line (6) has experiment 'table7', but the "
                                           f"experiment analysed is 'figure11' (another experiment's file?)")


def test_files_of_two_experiments_without_a_name(tmp_path):
    a = write(tmp_path / "a.csv", GOOD[:3])
    b = write(tmp_path / "b.csv", [line("r2", "FA_prefill", experiment="figure11")])
    with pytest.raises(RawDataError) as info:
        load_raw([a, b])
    assert str(info.value) == f"{b}:2: experiment 'figure11', but {a}:2 has 'table7' (a line of another experiment?)"


def test_missing_column(tmp_path):
    raw = tmp_path / "shard-0-of-1.csv"
    frame = pd.read_csv(write(raw, GOOD)).drop(columns=["median_ms"])
    frame.to_csv(raw, index=False)
    message = error_of([raw])
    assert message.startswith(f"{raw}:1: no column median_ms in the header (the raw CSV needs row_key, method, ")


def test_unknown_status(tmp_path):
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:3], line("r2", "FA_prefill", status="okay"), *GOOD[4:]])
    assert error_of([raw]) == f"{raw}:5: status 'okay' is not one of ok, failed_check, unavailable, error"


def test_bad_whole_number(tmp_path):
    bad = line("r1", "POD").replace(",16,4,128,", ",16,4.5,128,")
    raw = write(tmp_path / "shard-0-of-1.csv", [*GOOD[:2], bad, *GOOD[3:]])
    assert error_of([raw]) == f"{raw}:4: kv_heads '4.5' is not a whole number >= 0"


def test_duplicate_across_two_files_names_both(tmp_path):
    a = write(tmp_path / "shard-0-of-2.csv", GOOD[:4])
    b = write(tmp_path / "shard-1-of-2.csv", GOOD[3:])
    message = error_of([a, b])
    assert message == (f"1 duplicate (row_key, method) in the raw CSVs ({a}, {b}); are two sweeps of different "
                       f"shard counts mixed in one folder?\n('r2', 'FA_prefill') at {a}:5 and {b}:2")


def test_several_problems_are_listed_with_lines(tmp_path):
    lines = [line("r1", "FA_prefill", median="-1"), *GOOD[1:], *[f"junk{i}" for i in range(12)]]
    raw = write(tmp_path / "shard-0-of-1.csv", lines)
    message = error_of([raw]).splitlines()
    assert message[0] == "13 problems in the raw CSVs:"
    assert message[1] == f"{raw}:2: median_ms '-1' on a line with status ok: expected a finite number > 0"
    assert message[2].startswith(f"{raw}:8: 1 field where")
    assert message[-1] == "... and 3 more"


def test_validation_error_leaves_previous_tables_untouched(tmp_path, experiment):
    raw = write(tmp_path / "shard-0-of-1.csv", GOOD)
    out = tmp_path / "tables"
    aggregate(experiment, [raw], out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert set(before) == {"table7.csv", "table7_summary.csv"}
    with open(raw, "a") as f:
        f.write("garbage\n")
    with pytest.raises(RawDataError, match=re.escape(f"{raw}:8: 1 field")):
        aggregate(experiment, [raw], out)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_unchanged_tables_are_not_rewritten(tmp_path, experiment):
    raw = write(tmp_path / "shard-0-of-1.csv", GOOD)
    out = tmp_path / "tables"
    aggregate(experiment, [raw], out)
    table = out / "table7.csv"
    os.utime(table, ns=(1_000_000_000, 1_000_000_000))
    data, inode = table.read_bytes(), table.stat().st_ino
    aggregate(experiment, [raw], out)
    # not rewritten (same bytes, same file), only marked current so the workflow sees it up to date
    assert table.read_bytes() == data and table.stat().st_ino == inode
    assert table.stat().st_mtime_ns > 1_000_000_000

    write(raw, [*GOOD[:5], line("r2", "POD", median="1.0")])  # POD faster on r2: a new table
    aggregate(experiment, [raw], out)
    assert table.read_bytes() != data and table.stat().st_ino != inode  # replaced, not rewritten in place
    assert pd.read_csv(table).set_index("row_key").loc["r2", "speedup_POD"] == 4.0
    assert sorted(p.name for p in out.iterdir()) == ["table7.csv", "table7_summary.csv"]  # no temporary left


def test_write_csv_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    atomic.write_csv(pd.DataFrame({"a": [1]}), path, index=False)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_csv(pd.DataFrame({"a": [2]}), path, index=False)
    assert path.read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_write_csv_matches_to_csv(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.123456789], "b": ["x", None]})
    atomic.write_csv(frame, tmp_path / "ours.csv", index=False, float_format="%.6g")
    frame.to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6g")
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def _figure(y):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, y])
    return fig


def test_save_figure_is_deterministic_and_skips_same_pixels(tmp_path):
    path = tmp_path / "f.png"
    fig = _figure(1)
    assert atomic.save_figure(fig, path, dpi=50)
    data = path.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data.lower()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    inode = path.stat().st_ino
    assert not atomic.save_figure(fig, path, dpi=50)  # same bytes
    assert path.read_bytes() == data and path.stat().st_ino == inode and path.stat().st_mtime_ns > 1_000_000_000

    fig.savefig(path, dpi=50)  # same pixels, other bytes (matplotlib's Software tag)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    old = path.read_bytes()
    assert old != data
    inode = path.stat().st_ino
    assert not atomic.save_figure(fig, path, dpi=50)
    assert path.read_bytes() == old and path.stat().st_ino == inode

    assert atomic.save_figure(_figure(2), path, dpi=50)  # other pixels: replaced
    assert path.read_bytes() != old and path.stat().st_ino != inode
    plt.close("all")


MICRO_HEADER = "experiment,compute_iters,variant,time_ms_median,time_ms_min,time_ms_max,verified,gpu_name,sm_count"


def test_microbench_raw_is_checked(tmp_path):
    raw = tmp_path / "figure7.csv"
    raw.write_text(f"{MICRO_HEADER}\nfigure7,20,serial,1.5,1.4,1.6,1,G,7\nfigure7,20,streams,-1,1.4,1.6,1,G,7\n"
                   f"figure7,20,warp_parallel,,,,0,G,7\n")
    with pytest.raises(RawDataError) as info:
        load_microbench(raw)
    assert str(info.value) == (f"{raw}:3: time_ms_median '-1' on a line with verified 1: "
                               f"expected a finite number > 0")
    raw.write_text(f"{MICRO_HEADER}\nfigure7,20,serial,1.5,1.4,1.6,1,G,7\nfigure7,20,serial,1.5,1.4,1.6,1,G,7\n")
    with pytest.raises(RawDataError, match=re.escape(f"(20, 'serial') at {raw}:2 and {raw}:3")):
        load_microbench(raw)


CTA_HEADER = "experiment,row_key,method,status,reason,impl,pid,op,cta,sm,start_us,end_us,sm_count"


def test_cta_trace_is_checked(tmp_path):
    import gzip

    ctas = tmp_path / "ctas.csv.gz"
    good = "exp,r1,M1,ok,,t,0,0,0,3,0.0,1.5,2\nexp,r1,M2,failed_check,differs,t,,,,,,,\n"
    ctas.write_bytes(gzip.compress(f"{CTA_HEADER}\n{good}exp,r1,M1,ok,,t,1,1,0,1,,2.0,2\n".encode()))
    with pytest.raises(RawDataError) as info:
        load_ctas(ctas)
    assert str(info.value) == f"{ctas}:4: start_us '' on a line with status ok: expected a finite number >= 0"
    ctas.write_bytes(gzip.compress(f"{CTA_HEADER}\n{good}".encode())[:-12])  # an interrupted gzip
    with pytest.raises(RawDataError, match=re.escape(f"{ctas}: not a complete gzip file")):
        load_ctas(ctas)
    ctas.write_bytes(gzip.compress(f"{CTA_HEADER}\n{good}exp,r1,M1,ok,,t,1,1,0,1,0.0,0.0,2\n".encode()))
    assert len(load_ctas(ctas)) == 3  # all-zero times (CPU interpreter) are valid
