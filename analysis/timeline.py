"""CTA trace of experiments.timeline -> running prefill and decode CTAs over time, and a summary.

    python -m analysis.timeline --ctas results/raw/pod_timeline/timeline/ctas.csv.gz \
        --out-table results/tables/pod_timeline_timeline.csv \
        --out-summary results/tables/pod_timeline_timeline_summary.csv

Table (tidy, one line per (row_key, method, grid point)): ``t_us`` and the number of prefill and
decode CTAs running at that time (``running_prefill``, ``running_decode``; a CTA runs at t when
start <= t < end). Every method of one hybrid batch is sampled on the same grid of ``--points``
points from the batch's first CTA start to the end of its longest traced launch.

Summary (one line per (row_key, method), also for methods without a trace: ``status`` and
``reason`` say why): ``makespan_us`` (first CTA start to last CTA end); ``only_prefill_us``,
``only_decode_us``, ``both_us`` and ``idle_us``, the time within the makespan where only prefill
CTAs, only decode CTAs, both or none run, and the same as fractions of the makespan (``*_frac``);
per part (``prefill_``, ``decode_``) the number of CTAs (``ctas``), the first start and last end
(``start_us``, ``end_us``), the summed CTA time (``busy_us``) and ``mean_ctas_per_sm``: CTAs of that
part running per SM, averaged over the makespan (busy_us / (makespan_us x SMs)). These come from the exact start and end events, not
from the grid. A trace whose every time is 0 (the Triton interpreter on the CPU) has
``zero_times`` True and NaN times.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.atomic import write_csv
from analysis.validate import CTAS, load_checked

PARTS = {0: "prefill", 1: "decode"}
KEYS = ["row_key", "method"]
STATES = ["only_prefill", "only_decode", "both", "idle"]
DEFAULT_POINTS = 200


def load_ctas(path, experiment: str | None = None) -> pd.DataFrame:
    """The CTA CSV (gzip or not) of experiments.timeline, every line checked (analysis.validate.CTAS:
    columns, status, times on traced lines, one experiment); a bad line raises RawDataError
    naming file and line."""
    return load_checked([path], CTAS, experiment)


def traced(ctas: pd.DataFrame) -> pd.DataFrame:
    """The CTA lines of traced launches (status ok), with a checked integer ``op``."""
    ok = ctas[ctas["status"].eq("ok") & ctas["op"].notna()].copy()
    ok["op"] = ok["op"].astype(int)
    unknown = sorted(set(ok["op"]) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part (op) {unknown}: expected 0 (prefill) or 1 (decode)")
    if (ok["end_us"] < ok["start_us"]).any():
        raise ValueError("a CTA ends before it starts")
    return ok


def _events(ok: pd.DataFrame) -> pd.DataFrame:
    """One +1 event per CTA start and one -1 per end, sorted by time (stable), with the running
    count of each part after the event within its (row_key, method)."""
    prefill = ok["op"].eq(0).astype(int).to_numpy()
    frames = [pd.DataFrame({"row_key": ok["row_key"].to_numpy(), "method": ok["method"].to_numpy(),
                            "t_us": ok[column].to_numpy(dtype=float),
                            "d_prefill": sign * prefill, "d_decode": sign * (1 - prefill)})
              for column, sign in (("start_us", 1), ("end_us", -1))]
    events = pd.concat(frames, ignore_index=True).sort_values("t_us", kind="stable", ignore_index=True)
    groups = events.groupby(KEYS, sort=False)
    events["running_prefill"] = groups["d_prefill"].cumsum()
    events["running_decode"] = groups["d_decode"].cumsum()
    return events


def running_series(ctas: pd.DataFrame, points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Tidy step series: running prefill and decode CTAs of every traced (row_key, method) at
    ``points`` times, common to the methods of one batch (see the module docstring)."""
    columns = KEYS + ["point", "t_us", "running_prefill", "running_decode"]
    ok = traced(ctas)
    if ok.empty:
        return pd.DataFrame(columns=columns)
    span = ok.groupby("row_key", sort=False).agg(lo=("start_us", "min"), hi=("end_us", "max"))
    launches = ok[KEYS].drop_duplicates().join(span, on="row_key")
    grid = launches.merge(pd.DataFrame({"point": np.arange(points)}), how="cross")
    grid["t_us"] = grid["lo"] + (grid["hi"] - grid["lo"]) * grid["point"] / max(points - 1, 1)
    # The count at t is the running count after the last event at or before t (ties included).
    events = _events(ok)[KEYS + ["t_us", "running_prefill", "running_decode"]]
    series = pd.merge_asof(grid.sort_values("t_us", kind="stable"), events, on="t_us", by=KEYS,
                           direction="backward", allow_exact_matches=True)
    running = ["running_prefill", "running_decode"]
    series[running] = series[running].fillna(0).astype(int)
    order = launches[KEYS].reset_index(drop=True).reset_index(names="launch")
    series = series.merge(order, on=KEYS).sort_values(["launch", "point"], ignore_index=True)
    return series[columns]


def _sm_count(ok: pd.DataFrame) -> pd.Series:
    """SMs of each launch's GPU: the provenance sm_count, else the SMs seen in the trace."""
    groups = ok.groupby(KEYS, sort=False)
    seen = groups["sm"].nunique() if "sm" in ok else groups.size() * np.nan
    return groups["sm_count"].first().fillna(seen) if "sm_count" in ok else seen


def summarize(ctas: pd.DataFrame) -> pd.DataFrame:
    """Per (row_key, method): status, makespan, time with only prefill / only decode / both / no
    CTAs running, and per part CTAs, span, busy time and mean running CTAs per SM."""
    info = [c for c in ("experiment", "status", "reason", "impl", "gpu_name") if c in ctas.columns]
    out = ctas.groupby(KEYS, sort=False)[info].first()
    ok = traced(ctas)
    if ok.empty:
        return out.assign(zero_times=pd.NA, makespan_us=np.nan).reset_index()

    launch = ok.groupby(KEYS, sort=False).agg(start=("start_us", "min"), end=("end_us", "max"))
    out["sm_count"] = _sm_count(ok).astype("Int64")
    out["makespan_us"] = launch["end"] - launch["start"]
    out["zero_times"] = out["makespan_us"].eq(0).where(out["makespan_us"].notna())

    events = _events(ok)
    events["dt"] = events.groupby(KEYS, sort=False)["t_us"].shift(-1) - events["t_us"]
    prefill, decode = events["running_prefill"] > 0, events["running_decode"] > 0
    events["state"] = np.select([prefill & ~decode, ~prefill & decode, prefill & decode], STATES[:3], STATES[3])
    # The last event of a launch has no successor (dt NaN): nothing runs after it.
    spent = events.dropna(subset=["dt"]).pivot_table(index=KEYS, columns="state", values="dt", aggfunc="sum")
    spent = spent.reindex(columns=STATES, fill_value=0.0).fillna(0.0)
    for state in STATES:
        out[f"{state}_us"] = spent[state]
        out[f"{state}_frac"] = out[f"{state}_us"] / out["makespan_us"]

    per_part = (ok.assign(part=ok["op"].map(PARTS), busy=ok["end_us"] - ok["start_us"])
                .groupby(KEYS + ["part"], sort=False)
                .agg(ctas=("op", "size"), start_us=("start_us", "min"), end_us=("end_us", "max"),
                     busy_us=("busy", "sum"))
                .unstack("part"))
    for part in PARTS.values():
        for stat in ("ctas", "start_us", "end_us", "busy_us"):
            out[f"{part}_{stat}"] = per_part[(stat, part)] if (stat, part) in per_part else np.nan
        out[f"{part}_ctas"] = out[f"{part}_ctas"].fillna(0).where(out["makespan_us"].notna())
        out[f"{part}_busy_us"] = out[f"{part}_busy_us"].fillna(0.0).where(out["makespan_us"].notna())
        out[f"{part}_mean_ctas_per_sm"] = out[f"{part}_busy_us"] / (out["makespan_us"] * out["sm_count"])

    # All-zero times (CPU interpreter) carry no timing: NaN rather than 0 s or 0/0.
    timed = [c for c in out.columns if c.endswith(("_us", "_frac", "_per_sm"))]
    out.loc[out["zero_times"].eq(True), timed] = np.nan
    return out.reset_index()


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m analysis.timeline", description=__doc__.splitlines()[0])
    ap.add_argument("--ctas", required=True, type=Path, help="CTA CSV of experiments.timeline (.csv or .csv.gz)")
    ap.add_argument("--out-table", required=True, type=Path)
    ap.add_argument("--out-summary", required=True, type=Path)
    ap.add_argument("--points", type=int, default=DEFAULT_POINTS, help="grid points per launch")
    args = ap.parse_args(argv)
    if args.points < 2:
        ap.error("--points must be at least 2")

    ctas = load_ctas(args.ctas)
    table, summary = running_series(ctas, args.points), summarize(ctas)
    written = [write_csv(frame, path, index=False) for path, frame in ((args.out_table, table),
                                                                        (args.out_summary, summary))]
    zero = int(summary["zero_times"].eq(True).sum()) if "zero_times" in summary else 0
    print(f"{len(summary)} (batch, method) launches, {int(summary['status'].eq('ok').sum())} traced"
          + (f", {zero} with all CTA times 0 (no timing: CPU interpreter)" if zero else "")
          + "; " + "; ".join(f"{'wrote' if w else 'unchanged:'} {p}"
                             for w, p in zip(written, (args.out_table, args.out_summary))))


if __name__ == "__main__":
    main()
