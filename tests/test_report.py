"""analysis/report.py: every number of results/REPORT.md (and STUDIES.md) is the tables' own."""
import math
import re

import pandas as pd
import pytest

from analysis import report

TABLES = report.ROOT / "results" / "tables"
PAPER = [n for n in report.PAPER_ORDER if (TABLES / f"{n}_summary.csv").exists()]


def cells(text, heading):
    """Rows (lists of cells) of the first markdown table under '## heading'."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n| "):].lstrip("\n").split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:] if not r.startswith("|---")]


def num(cell):
    """The number of a report cell ('1.2345', '41.45%', '–' = missing)."""
    if cell == "–":
        return math.nan
    return float(cell[:-1]) / 100 if cell.endswith("%") else float(cell)


def same(cell, value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "–"
    return abs(num(cell) - value) <= 0.5 * 10 ** -digits + 1e-12


SERVING = report.ROOT / "results" / "serving"


@pytest.fixture(scope="module")
def text():
    return report.render(PAPER, TABLES, serving=SERVING)


def test_shipped_report_is_what_the_tables_give(text):
    """results/REPORT.md as committed is exactly what the generator writes from the tables."""
    assert (report.ROOT / "results" / "REPORT.md").read_text() == text


# each GPU tree's serving runs: the H100's (results/) have no table 5, the H200's do
@pytest.mark.parametrize("tree,has_table5", [("results", False), ("results/h200", True)])
def test_serving_numbers_equal_the_serving_tables(tree, has_table5):
    serving = report.ROOT / tree / "serving"
    section = report.render([], report.ROOT / tree / "tables", serving=serving).split("## Serving (end-to-end)\n", 1)[1]
    f12 = pd.read_csv(serving / "tables" / "figure12.csv")
    rows = {r.split(" | ")[0].strip("| "): r for r in section.split("### figure12", 1)[1].split("### ", 1)[0].splitlines()
            if r.startswith("| ") and not r.startswith("| model")}
    assert set(rows) == set(f12["model"])
    for r in f12.itertuples():
        assert f"{r.sim_requests_per_minute:.1f} ({r.window_requests_per_minute:.1f})" in rows[r.model]
    assert (serving / "tables" / "table5.md").exists() == has_table5
    if has_table5:
        table5 = [line for line in (serving / "tables" / "table5.md").read_text().splitlines() if line.startswith("|")]
        assert table5 and all(line in section.splitlines() for line in table5)


@pytest.mark.parametrize("name", [n for n in PAPER if n != "figure7"])
def test_summary_numbers_equal_the_tables(text, name):
    summary = pd.read_csv(TABLES / f"{name}_summary.csv").set_index("method")
    rows = cells(text, name)
    assert {r[0] for r in rows} == set(summary.index)
    for r in rows:
        s = summary.loc[r[0]]
        assert r[1] == s["role"] and int(r[2]) == s["n"]
        for cell, col in zip(r[3:7], ["mean_speedup", "median_speedup", "min_speedup", "max_speedup"]):
            assert same(cell, s[col], 4), (name, r[0], col)
        assert same(r[7], s["frac_slower"], 4) and same(r[8], s["frac_at_or_below_best_peer"], 4)
        assert same(r[9], s["median_limit_fraction"], 4)
    gpu = summary[["gpu_name", "sm_count"]].drop_duplicates().iloc[0]
    section = text.split(f"## {name}\n", 1)[1]
    assert f"{gpu['gpu_name']} ({int(gpu['sm_count'])} SMs)" in section.split("\n## ", 1)[0]


def test_figure11_headline(text):
    """The issue's drift examples are the table's values, and POD's faster-than shares are counted."""
    rows = {r[0]: r for r in cells(text, "figure11")}
    summary = pd.read_csv(TABLES / "figure11_summary.csv").set_index("method")
    assert rows["FA_BackToBack"][7] == f"{100 * summary.loc['FA_BackToBack', 'frac_slower']:.2f}%"
    assert rows["FI_Batched_auto"][3] == f"{summary.loc['FI_Batched_auto', 'mean_speedup']:.4f}"
    table = pd.read_csv(TABLES / "figure11.csv")
    kept = table[table["kept"]]
    assert f"{len(table)} hybrid batches, {len(kept)} kept" in text
    section = text.split("## figure11\n", 1)[1].split("\n## ", 1)[0]
    for rival in ("FI_POD", "HFuse", "OURS_CTA"):
        both = kept[["ms_POD", f"ms_{rival}"]].dropna()
        k = int((both["ms_POD"] < both[f"ms_{rival}"]).sum())
        assert f"| {rival} | {k} of {len(both)} |" in section


def test_figure7_numbers(text):
    summary = pd.read_csv(TABLES / "figure7_summary.csv").set_index("variant")
    for r in cells(text, "figure7"):
        s = summary.loc[r[0]]
        assert int(r[1]) == s["n"]
        for cell, col in zip(r[2:], ["mean_speedup_over_serial", "min_speedup", "max_speedup",
                                     "mean_time_over_ideal", "max_time_over_ideal"]):
            assert same(cell, s[col], 4), (r[0], col)


def test_studies_report_has_every_study_with_tables():
    studies = sorted(p.stem for p in (report.ROOT / "experiments" / "studies").glob("*.yaml")
                     if (TABLES / f"{p.stem}_summary.csv").exists())
    text = report.render(studies, TABLES, studies=True)
    for name in studies:
        assert f"## {name}\n" in text and f"`make {name}`" in text
        summary = pd.read_csv(TABLES / f"{name}_summary.csv")
        assert len(cells(text, name)) == len(summary)
    shipped = report.ROOT / "results" / "STUDIES.md"
    assert shipped.read_text() == text
    assert re.search(r"NVIDIA H200 \(132 SMs\)", text)  # the Hopper-native kernel's checks


def test_manifests_are_current():
    """Every <tree>/raw/<exp>/MANIFEST.md (results/ and each results/<gpu>/) is what
    analysis.manifest writes from the files and the tree's raw/commands.yaml, and every raw file
    has a command."""
    from analysis import manifest

    assert manifest.main(["--check"]) == 0
    for tree in manifest.trees():
        cmds = manifest.commands(tree)
        for folder in sorted(p for p in (tree / "raw").iterdir() if p.is_dir()):
            for f in folder.rglob("*"):
                if f.is_file() and f.name != manifest.MANIFEST:
                    cmd, note = manifest.command_for(folder.name, f.relative_to(folder).as_posix(), cmds.get(folder.name))
                    assert cmd, f


def test_pod_targets_on_a_synthetic_table():
    """Each headline number from its definition: best peer, perfect-overlap bound (larger of the
    fastest prefill alone and the fastest decode alone), >2% over OURS_Serial, prefill rate."""
    t = pd.DataFrame({
        "kept": [True, True, False, True],
        "best_peer_ms": [1.0, 2.0, 1.0, 4.0],
        "ms_POD": [1.0, 2.2, 0.9, 3.0],
        "ms_OURS_Serial": [1.0, 2.0, 1.0, 3.5],
        "ms_FA_prefill": [0.8, 1.0, 0.5, 2.0],
        "ms_OURS_prefill": [0.5, 1.2, 0.5, 2.5],
        "ms_FI_prefill_auto": [0.4, 0.9, 0.4, 2.0],
        "ms_FA_decode": [0.6, 2.0, 0.5, 1.0],
        "ms_OURS_decode": [0.7, 1.0, 0.5, 1.5],
        "ms_FI_decode": [0.9, 1.5, 0.9, 1.2],
    })
    got = dict(report.pod_targets(t))
    assert got["POD at or below the best peer, kept batches (3)"] == "66.67%"
    assert got["POD at or below the best peer, all batches (4)"] == "75.00%"
    # bounds of the kept rows: max(0.4, 0.6) = 0.6, max(0.9, 1.0) = 1.0, max(2.0, 1.0) = 2.0
    ratios = pd.Series([1.0 / 0.6, 2.2 / 1.0, 3.0 / 2.0])
    assert got["POD / perfect-overlap bound, kept batches: median, p90 (3)"] == \
        f"{ratios.median():.3f}, {ratios.quantile(0.9):.3f}"
    assert got["POD slower than OURS_Serial by more than 2%, all batches (4)"] == "1 (25.00%), worst 1.100"
    rates = pd.Series([0.4 / 0.5, 0.9 / 1.2, 2.0 / 2.5])
    assert got["OURS_prefill's rate over FI_prefill_auto's, kept batches: median (3)"] == f"{rates.median():.3f}"
    # without the columns, nothing is claimed; without a best peer's part, no bound (it would be
    # the bound of slower parts)
    assert report.pod_targets(t[["kept", "ms_POD"]]) == []
    assert not any(what.startswith("POD / perfect-overlap") for what, _ in report.pod_targets(t.drop(columns="ms_FI_decode")))


def test_pod_by_prefill_share_bins_the_kept_batches():
    t = pd.DataFrame({
        "kept": [True, True, True, False],
        "ms_POD": [1.0, 1.1, 0.9, 5.0],
        "best_peer_ms": [1.0, 1.0, 1.0, 1.0],
        "ms_FI_prefill_auto": [0.1, 0.15, 0.45, 0.45],
        "ms_FI_Serial": [1.0, 1.0, 1.0, 1.0],
    })
    bins = report.pod_by_prefill_share(t)
    assert list(bins["batches"]) == [2, 1]  # 10% and 15% in the first bin, 45% in 40-50%; the dropped row not at all
    assert list(bins["at_or_below"]) == [0.5, 1.0]
    assert list(bins["median_over_best_peer"]) == [pytest.approx(1.05), pytest.approx(0.9)]
    assert report.pod_by_prefill_share(t.drop(columns="ms_FI_Serial")).empty


def test_pod_trailing_splits_the_kept_batches_by_the_best_peer():
    t = pd.DataFrame({
        "kept": [True, True, True, False],
        "ms_POD": [1.1, 1.2, 0.9, 5.0],
        "best_peer_ms": [1.0, 1.0, 1.0, 1.0],
        "ms_OURS_Serial": [1.1, 1.0, 1.0, 5.0],
        "ms_OURS_prefill": [0.5, 0.4, 0.3, 1.0],
        "ms_FI_prefill_auto": [0.4, 0.5, 0.3, 1.0],
        "ms_OURS_decode": [0.66, 0.63, 0.5, 1.0],
        "ms_FI_decode": [0.6, 0.6, 0.6, 1.0],
    })
    got = report.pod_trailing(t)
    above, below = got.loc["above the best peer"], got.loc["at or below"]
    assert above["batches"] == 2 and below["batches"] == 1          # the dropped row counts nowhere
    assert above["pod_over_best_peer"] == pytest.approx(1.15)
    assert above["pod_over_ours_serial"] == pytest.approx((1.0 + 1.2) / 2)
    assert above["prefill_ours_over_fi"] == pytest.approx((1.25 + 0.8) / 2) and above["prefill_ours_slower"] == 0.5
    assert above["decode_ours_over_fi"] == pytest.approx(1.075) and above["decode_ours_slower"] == 1.0
    assert below["decode_ours_slower"] == 0.0
    assert report.pod_trailing(t.drop(columns="ms_FI_decode")).empty
    # the section shows it under the headline numbers of a figure-11 re-timing
    tables = report.ROOT / "results" / "h200" / "tables"
    text = report.render(["figure11_h200_kept"], tables, studies=True)
    assert "What POD's losses are made of" in text and "| above the best peer |" in text


def test_studies_that_extend_figure11_get_its_headline_numbers():
    """A study written as `extends: figure11` is figure 11's grid, so its section carries POD's
    headline numbers and faster-than shares, as does a re-timing of figure-11 batches
    (report.RETIMED_FIGURE11); another study gets neither."""
    tables = report.ROOT / "results" / "h200" / "tables"
    text = report.render(["figure11_h100_batches", "hopper_check"], tables, studies=True)
    grid = text.split("## figure11_h100_batches\n", 1)[1].split("\n## ", 1)[0]
    other = text.split("## hopper_check\n", 1)[1]
    table = pd.read_csv(tables / "figure11_h100_batches.csv")
    expected = dict(report.pod_targets(table))
    assert expected and all(f"| {what} | {value} |" in grid for what, value in expected.items())
    assert "POD's headline numbers" not in other
    # a re-timing of figure 11 written as a list of its batches gets them too
    kept = report.render(["figure11_h200_kept"], tables, studies=True)
    expected = dict(report.pod_targets(pd.read_csv(tables / "figure11_h200_kept.csv")))
    assert expected and all(f"| {what} | {value} |" in kept for what, value in expected.items())


def test_figure11_section_points_to_its_queue_ahead_retimings(tmp_path):
    """A tree whose figure-11 grid predates queue_ahead and that holds a re-timing says so under the
    grid's numbers; a grid timed with queue_ahead, or a tree without re-timings, does not."""
    shipped = report.ROOT / "results" / "h200" / "tables"
    for stem in ("figure11", "figure11_summary"):
        (tmp_path / f"{stem}.csv").write_bytes((shipped / f"{stem}.csv").read_bytes())
    pointer = "Re-timed with it in this tree"
    assert not any(pointer in x for x in report.attention_section("figure11", tmp_path))
    (tmp_path / "figure11_fusion_baselines.csv").write_text("row_key\n")
    lines = report.attention_section("figure11", tmp_path)
    assert any(pointer in x and "`figure11_fusion_baselines`" in x and "figure11_queue_ahead" not in x for x in lines)
    pd.read_csv(tmp_path / "figure11.csv").assign(timing="events+queue_ahead").to_csv(tmp_path / "figure11.csv", index=False)
    assert not any(pointer in x for x in report.attention_section("figure11", tmp_path))


def test_pod_faster_shares_cover_every_figure11_rival_timed():
    t = pd.DataFrame({"kept": [True, True, False], "ms_POD": [1.0, 2.0, 1.0], "ms_FA_Streams": [1.5, 1.5, 0.5],
                      "ms_FI_Batched_fa2": [2.0, 2.5, 0.5], "ms_FA_Serial": [3.0, 3.0, 3.0]})
    assert report.pod_faster_shares(t) == {"FI_Batched_fa2": (2, 2), "FA_Streams": (1, 2), "FA_Serial": (2, 2)}
