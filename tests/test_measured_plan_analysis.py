"""analysis/measured_plan.py: the decision's own times read back from the impl column."""
import pandas as pd
import pytest

from analysis.measured_plan import decision_times, summary, table


def test_decision_times_parse_both_forms():
    assert decision_times("triton serial (plan measured: measured serial 2.123 vs fused2 2.081 ms, key 1/2)") == {
        "winner": "serial", "winner_ms": 2.123, "serial_ms": 2.123}
    assert decision_times("triton cps4 ... (plan measured: measured fused4 0.8102 < serial 0.8955 ms, key 3)") == {
        "winner": "fused4", "winner_ms": 0.8102, "serial_ms": 0.8955}
    assert decision_times("gluon hopper pod ... (plan measured: measured hopper 1.1 < serial 1.3 ms, key 3)") == {
        "winner": "hopper", "winner_ms": 1.1, "serial_ms": 1.3}
    assert decision_times("triton (plan thresholds)") is None


def test_table_and_summary():
    rows = pd.DataFrame([
        {"row_key": "a", "method": "OURS_Serial", "status": "ok", "median_ms": 2.0, "impl": "triton"},
        {"row_key": "a", "method": "POD_measured", "status": "ok", "median_ms": 2.2,
         "impl": "triton serial (plan measured: measured serial 2.0 vs fused2 1.99 ms, key k)"},
        {"row_key": "b", "method": "OURS_Serial", "status": "ok", "median_ms": 1.0, "impl": "triton"},
        {"row_key": "b", "method": "POD_measured", "status": "ok", "median_ms": 0.9,
         "impl": "triton cps4 (plan measured: measured fused4 0.9 < serial 1.0 ms, key k)"},
        {"row_key": "c", "method": "POD_measured", "status": "failed_check", "median_ms": None, "impl": "x"},
    ])
    t = table(rows)
    assert list(t.index) == ["a", "b"]
    assert t.loc["a", "final_over_decision"] == pytest.approx(1.1)
    assert t.loc["a", "serial_row_over_decision"] == pytest.approx(1.0)
    s = summary(t, 1.5).set_index("winner")
    assert s.loc["serial", "slower_than_serial_row_2pct"] == 1 and s.loc["fused4", "slower_than_serial_row_2pct"] == 0
    with pytest.raises(ValueError, match="no measured-plan decision"):
        table(rows[rows["row_key"] == "b"].assign(impl="triton"))
