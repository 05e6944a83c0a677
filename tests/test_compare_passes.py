"""analysis/compare_passes.py on two synthetic passes."""
import pandas as pd
import pytest

from analysis.compare_passes import compare, load_pass, main


def _write(folder, times):
    folder.mkdir()
    rows = [{"row_key": k, "method": m, "status": "ok", "median_ms": t} for k, by in times.items() for m, t in by.items()]
    rows.append({"row_key": "k0", "method": "POD", "status": "failed", "median_ms": 0.001})
    pd.DataFrame(rows).to_csv(folder / "shard-0-of-1.csv", index=False)


def test_counts_hits_in_each_pass_and_in_both(tmp_path, capsys):
    _write(tmp_path / "a", {"k0": {"POD": 1.05, "SER": 1.0}, "k1": {"POD": 1.03, "SER": 1.0},
                            "k2": {"POD": 0.9, "SER": 1.0}, "only_a": {"POD": 2.0, "SER": 1.0}})
    _write(tmp_path / "b", {"k0": {"POD": 1.00, "SER": 1.0}, "k1": {"POD": 1.10, "SER": 1.05},
                            "k2": {"POD": 1.2, "SER": 1.0}})
    a, b = load_pass(tmp_path / "a"), load_pass(tmp_path / "b")
    r = compare(a, b, "POD", "SER", 1.02)
    # k0: a only (the failed row is left out); k1: 1.03 and 1.048, both; k2: b only; only_a: not in both
    assert (r["batches"], r["first"], r["second"], r["both"], r["first_only"], r["second_only"]) == (3, 2, 2, 1, 1, 1)
    assert r["SER_moved_over_0.02"] == pytest.approx(1 / 3)
    assert r["POD_second_over_first_median"] == pytest.approx(1.10 / 1.03)
    with pytest.raises(KeyError, match="missing"):
        compare(a, b, "POD", "NOPE", 1.02)
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--ratio", "POD/SER"])
    assert "both: 1" in capsys.readouterr().out
