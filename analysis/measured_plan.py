"""POD's measured plan (``PodConfig(plan="measured")``) against its own decision: the impl column
records the times the decision measured for the launch that won; the row's median_ms is the same
launch timed again by the runner moments later. When the two disagree while OURS_Serial (timed
first, on the same batch) agrees with the decision, the row-level gap between POD and OURS_Serial
comes from when a method is timed, not from what it launches.

    python -m analysis.measured_plan results/raw/pod_plan_measured [--method POD_measured] [--above-ms 1.5]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

# "measured serial 2.123 vs fused2 2.081 ms" or "measured fused4 0.8102 < serial 0.8955 ms"
# ("hopper": the fused Gluon Hopper kernel)
_SERIAL = re.compile(r"measured serial ([\d.eE+-]+) vs (fused\d|hopper) ([\d.eE+-]+) ms")
_FUSED = re.compile(r"measured (fused\d|hopper) ([\d.eE+-]+) < serial ([\d.eE+-]+) ms")


def decision_times(impl: str) -> dict | None:
    """{'winner', 'winner_ms', 'serial_ms'} from one impl string of the measured plan (None if absent)."""
    m = _SERIAL.search(impl)
    if m:
        return {"winner": "serial", "winner_ms": float(m.group(1)), "serial_ms": float(m.group(1))}
    m = _FUSED.search(impl)
    if m:
        return {"winner": m.group(1), "winner_ms": float(m.group(2)), "serial_ms": float(m.group(3))}
    return None


def table(rows: pd.DataFrame, method: str = "POD_measured", serial: str = "OURS_Serial") -> pd.DataFrame:
    """One line per batch: the decision's times, the row's final time and OURS_Serial's."""
    ok = rows[rows["status"] == "ok"]
    pod = ok[ok["method"] == method].set_index("row_key")
    ser = ok[ok["method"] == serial].set_index("row_key")["median_ms"]
    dec = pd.DataFrame([decision_times(str(s)) or {} for s in pod["impl"]], index=pod.index)
    if "winner" not in dec:
        raise ValueError(f"no measured-plan decision in the impl column of {method}")
    out = dec.assign(final_ms=pod["median_ms"], serial_row_ms=ser.reindex(pod.index)).dropna()
    return out.assign(final_over_decision=out["final_ms"] / out["winner_ms"],
                      serial_row_over_decision=out["serial_row_ms"] / out["serial_ms"],
                      final_over_serial_row=out["final_ms"] / out["serial_row_ms"])


def summary(t: pd.DataFrame, above_ms: float) -> pd.DataFrame:
    """Medians and counts by winner and by batch size (OURS_Serial above or below ``above_ms``)."""
    size = (t["serial_row_ms"] > above_ms).map({True: f"> {above_ms} ms", False: f"<= {above_ms} ms"})
    g = t.assign(size=size).groupby(["winner", "size"])
    return g.agg(batches=("final_ms", "size"), final_over_decision=("final_over_decision", "median"),
                 serial_row_over_decision=("serial_row_over_decision", "median"),
                 final_over_serial_row=("final_over_serial_row", "median"),
                 slower_than_serial_row_2pct=("final_over_serial_row", lambda x: int((x > 1.02).sum()))).reset_index()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="raw runner CSVs of a study with the measured plan")
    ap.add_argument("--method", default="POD_measured")
    ap.add_argument("--serial", default="OURS_Serial")
    ap.add_argument("--above-ms", type=float, default=1.5)
    a = ap.parse_args(argv)
    files = sorted(Path(a.folder).glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {a.folder}")
    t = table(pd.concat([pd.read_csv(f) for f in files], ignore_index=True), a.method, a.serial)
    print(summary(t, a.above_ms).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
