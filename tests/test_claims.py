"""The paper-claims table (analysis/claims.py): verdicts from tables, missing targets, batch-for-batch."""
from pathlib import Path

import pandas as pd
import pytest

from analysis import claims as C


def tree(tmp_path, name, tables: dict) -> Path:
    root = tmp_path / name
    (root / "raw").mkdir(parents=True)
    (root / "tables").mkdir()
    for stem, df in tables.items():
        df.to_csv(root / "tables" / f"{stem}.csv", index=False)
    return root


def table7(limited_ms):
    return pd.DataFrame({"row_key": list("abcd"), "gpu_name": "G", "sm_count": 100, "ms_FA_Serial": 2.0,
                         "ms_POD_vanilla_split": 1.7, "ms_POD_limited_split": limited_ms})


def verdicts(root) -> dict:
    df = C.evaluate([root])
    return {r.claim: (r.measured, r.holds) for r in df.itertuples()}


def test_verdicts_follow_the_numbers(tmp_path):
    good = verdicts(tree(tmp_path, "good", {"table7": table7(1.45)}))
    assert good["T7-limited"][1] is True and good["T7-double"][1] is True   # gain 0.379 vs 0.176
    bad = verdicts(tree(tmp_path, "bad", {"table7": table7(1.75)}))
    assert bad["T7-limited"][1] is False and bad["T7-double"][1] is False
    # a target the tree does not hold is not run, not a failure
    assert all(pd.isna(x) for x in good["F11-never-slower"])


def test_gpu_trees_and_report(tmp_path):
    root = tree(tmp_path, "results", {"table7": table7(1.45)})
    other = tree(root, "gpu2", {"table7": table7(1.75).assign(gpu_name="H")})
    (root / "serving" / "tables").mkdir(parents=True)      # no raw/: not a GPU tree
    assert C.default_trees(root) == [root, other]
    text = C.render(C.evaluate(C.default_trees(root)), [])
    line = next(x for x in text.splitlines() if x.startswith("| table7 | Limiting prefill splits makes"))
    assert "**holds**" in line.split("|")[5] and "**does not hold**" in line.split("|")[6]
    assert "G (100 SMs)" in text and "H (100 SMs)" in text and "not run" in text


def test_same_batches(tmp_path):
    keys = [f"k{i}" for i in range(4)]
    a = pd.DataFrame({"row_key": keys, "kept": [True, True, True, False], "ms_POD": [2.0, 2.0, 2.0, 2.0],
                      "best_peer_ms": [2.5, 1.5, 2.5, 1.0], "ms_FA_prefill": 1.0})
    b = pd.DataFrame({"row_key": keys[1:], "kept": True, "ms_POD": 1.0, "best_peer_ms": 1.2, "ms_FA_prefill": 0.5,
                      "ms_HFuse": 1.0})
    h100 = tree(tmp_path, "results", {"figure11": a})
    other = tree(h100, "gpu2", {"figure11_h100_batches": b})
    df = C.same_batches(h100, other)
    assert set(df["method"]) == {"POD", "FA_prefill"}          # timed on both only
    pod = df.set_index("method").loc["POD"]
    assert pod["batches"] == 2 and pod["median_ratio"] == pytest.approx(2.0)   # k1, k2 (k3 not kept)
    h, o, n = df.attrs["pod_at_or_below_best_peer"]
    assert (h, o, n) == (0.5, 1.0, 2)


def test_every_claim_reads_the_shipped_h100_tree():
    root = Path("results")
    if not (root / "tables" / "figure11.csv").exists():
        pytest.skip("no shipped tables")
    df = C.evaluate([root])
    assert df["measured"].notna().all(), df[df["measured"].isna()]["claim"].tolist()
    assert df["holds"].map(lambda x: x in (True, False)).all()


def test_report_says_how_each_trees_figure11_rows_were_timed(tmp_path):
    shipped = Path("results/tables/figure11.csv")
    if not shipped.exists():
        pytest.skip("no shipped tables")
    f11 = pd.read_csv(shipped).head(2).assign(gpu_name="G", sm_count=100, timing=["events+queue_ahead", "events"])
    root = tree(tmp_path, "results", {"figure11": f11})
    other = tree(root, "gpu2", {"table7": table7(1.45)})
    df = C.evaluate([root, other])
    assert set(df[df["target"] == "figure11"]["timing"].dropna()) == {
        "figure11: `events+queue_ahead` (1 batches), `events` (1 batches)"}
    assert df[df["tree"] == str(other)]["timing"].dropna().tolist() == ["table7: not in this table"] * 2
    line = next(x for x in C.render(df, []).splitlines() if x.startswith("The tables each tree's figure-11 claims"))
    assert "G (100 SMs): figure11: `events+queue_ahead` (1 batches), `events` (1 batches)." in line


def f11_rows(**ms):
    """Four kept figure-11 batches timed as ``ms`` (method -> ms, FA_Serial's parts included)."""
    return pd.DataFrame({"row_key": list("abcd"), "gpu_name": "G", "sm_count": 100, "kept": True, "timing": "events",
                         **{f"ms_{m}": v for m, v in ms.items()}})


def test_figure11_claims_read_the_retimed_tables_where_a_tree_holds_them(tmp_path):
    serial = dict(FA_prefill=1.0, FA_decode=1.0, FA_Serial=2.0)
    slow = f11_rows(**serial, POD=2.2, HFuse=1.5, FA_Streams=1.9, FI_Serial=2.0)       # POD slower than serial
    peers = f11_rows(**serial, POD=1.5, FI_Serial=1.9).assign(timing="events+queue_ahead")
    fusions = f11_rows(**serial, POD=1.4, HFuse=1.6, FA_Streams=2.1).assign(timing="events+queue_ahead")
    only_old = verdicts(tree(tmp_path, "old", {"figure11": slow}))
    assert only_old["F11-never-slower"][1] is False and only_old["F11-mean"][1] is False
    df = C.evaluate([tree(tmp_path, "new", {"figure11": slow, C.F11_PEERS: peers, C.F11_FUSIONS: fusions})])
    r = df.set_index("claim")
    assert r.loc["F11-never-slower", "holds"] is True
    assert r.loc["F11-never-slower", "source"] == f"{C.F11_PEERS}, {C.F11_FUSIONS}"    # judged on both
    assert f"(`{C.F11_FUSIONS}`)" in r.loc["F11-never-slower", "measured"]
    assert r.loc["F11-mean", "holds"] is True                # POD first within each lease
    assert r.loc["F11-fi-serial", "source"] == C.F11_PEERS   # the fusion study has no FI_Serial: not read
    assert r.loc["F11-streams", "measured"].startswith("median 0.952x") and r.loc["F11-streams", "holds"] is True
    assert r.loc["F11-hfuse", "holds"] is False              # 1.25x on every batch: never slower than serial
    assert r.loc["F11-never-slower", "timing"] == (f"{C.F11_PEERS}: `events+queue_ahead`; "
                                                    f"{C.F11_FUSIONS}: `events+queue_ahead`")
    line = next(x for x in C.render(df, []).splitlines() if x.startswith("The tables each tree's figure-11 claims"))
    assert line.endswith(f"G (100 SMs): {C.F11_PEERS}: `events+queue_ahead`; {C.F11_FUSIONS}: `events+queue_ahead`.")
    # one re-timed table that fails the claim fails it, though the other holds it
    df = C.evaluate([tree(tmp_path, "mixed", {"figure11": slow, C.F11_PEERS: peers,
                                              C.F11_FUSIONS: fusions.assign(ms_POD=2.5)})])
    assert df.set_index("claim").loc["F11-never-slower", "holds"] is False
