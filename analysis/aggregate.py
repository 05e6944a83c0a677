"""Raw long CSVs (one line per (hybrid batch, method)) → a wide table and a per-method summary.

    python -m analysis.aggregate --experiment experiments/figure11.yaml \
        --raw results/raw/figure11/*.csv \
        --out-table results/tables/figure11.csv --out-summary results/tables/figure11_summary.csv

Table columns (one row per ``row_key``): the workload and GPU columns, then per method ``ms_<m>``
(median ms of ``ok`` rows only), ``status_<m>``, ``speedup_<m>`` (baseline / method) and
``limit_fraction_<m>`` (physical limit / method), plus ``kept`` (the paper's filter),
``best_peer_ms`` and ``limit_ms``.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.atomic import write_csv
from analysis.meta import read_meta
from analysis.validate import RAW, load_checked
from kernels.shapes import BatchSpec, ModelShape  # plain data: aggregation needs no torch

# What methods are built from (derived sums, the paper's filter, the best peers): kernels/catalogue.py,
# shared with the experiment validation (plain data, no torch).
from kernels.catalogue import BEST_PEERS, DERIVED, FILTER_PARTS, FILTER_TOTAL, is_part  # noqa: E402,F401
from kernels.catalogue import method_parts  # noqa: E402,F401  (the phases a method computes)

# Peaks by pattern on the gpu_name column (torch.cuda.get_device_name): (HBM bytes/s, dense
# fp16/bf16 tensor FLOP/s). Patterns are strict so that PCIe variants (other peaks) stay unknown.
GPU_PEAKS = {
    r"H100.*(SXM|HBM3)": (3.35e12, 989e12),   # H100 SXM 80GB ("NVIDIA H100 80GB HBM3")
    r"A100-SXM4-80GB": (2.039e12, 312e12),    # A100 SXM 80GB (the paper's GPU)
    r"H200": (4.8e12, 989e12),
}

WORKLOAD_COLUMNS = ["experiment", "model", "q_heads", "kv_heads", "head_dim", "dtype", "prefill_len",
                    "prefill_kv_len", "chunk_idx", "decode_batch", "decode_ctx", "page_size", "group_key"]
GPU_COLUMNS = ["gpu_name", "sm_count"]
# a batch's timing modes (experiments.timing.timing_mode) when its rows predate the raw `timing` column
UNRECORDED_TIMING = "not recorded (before queue_ahead)"

# Worst first: a derived method takes the worst status of its parts.
_STATUS_SEVERITY = ("error", "failed_check", "unavailable", "ok")


def load_raw(paths, experiment: str | None = None) -> pd.DataFrame:
    """Concatenate raw shard CSVs after checking every line (analysis.validate: required columns,
    known status, finite positive times on ok lines, the experiment ``experiment`` on every line, or
    without it the first line's, no partial lines); a (row_key, method) pair may appear only once
    across shards. A bad line raises ``RawDataError`` naming its file and line."""
    return load_checked(paths, RAW, experiment)


def gpu_peaks(gpu_name) -> tuple[float, float]:
    """(bytes/s, FLOP/s) of a GPU by its device name; NaNs and a warning when it is not known."""
    for pattern, peaks in GPU_PEAKS.items():
        if isinstance(gpu_name, str) and re.search(pattern, gpu_name):
            return peaks
    warnings.warn(f"no peak numbers for GPU {gpu_name!r}; its physical limit is NaN "
                  f"(add it to analysis.aggregate.GPU_PEAKS)", stacklevel=2)
    return np.nan, np.nan


def _int(value) -> int:
    return 0 if pd.isna(value) else int(value)


def work_and_peaks(batches: pd.DataFrame) -> pd.DataFrame:
    """Per row: FLOPs and bytes moved of each part (useful work, as kernels.workload counts it)
    and the GPU's peaks (NaN for an unknown GPU)."""
    gpu_names = batches["gpu_name"].astype(object).fillna("")  # CPU runs leave it empty; NaN keys would not match
    peaks = {name: gpu_peaks(name) for name in gpu_names.unique()}
    records = []
    for row, gpu_name in zip(batches.itertuples(), gpu_names):
        model = ModelShape(name=str(row.model), q_heads=_int(row.q_heads), kv_heads=_int(row.kv_heads),
                           head_dim=_int(row.head_dim))
        spec = BatchSpec(model=model, dtype=str(row.dtype), prefill_len=_int(row.prefill_len),
                         prefill_kv_len=_int(row.prefill_kv_len), decode_batch=_int(row.decode_batch),
                         decode_ctx=_int(row.decode_ctx), page_size=_int(row.page_size))
        flops, moved = spec.flops(), spec.bytes_moved()
        bandwidth, flop_rate = peaks[gpu_name]
        records.append({"flops_prefill": flops["prefill"], "flops_decode": flops["decode"],
                        "bytes_prefill": moved["prefill"], "bytes_decode": moved["decode"],
                        "peak_bytes_per_s": bandwidth, "peak_flops_per_s": flop_rate})
    return pd.DataFrame.from_records(records, index=batches.index)


def physical_limit_ms(batches: pd.DataFrame, work: pd.DataFrame | None = None) -> pd.Series:
    """Per row: max(bytes moved / HBM bandwidth, FLOPs / tensor peak) in ms, i.e. the time of a
    perfect overlap of the memory-bound decode and the compute-bound prefill."""
    w = work_and_peaks(batches) if work is None else work
    memory_s = (w["bytes_prefill"] + w["bytes_decode"]) / w["peak_bytes_per_s"]
    compute_s = (w["flops_prefill"] + w["flops_decode"]) / w["peak_flops_per_s"]
    return (np.maximum(memory_s, compute_s) * 1e3).astype(float)


def achieved_utilization(ms: pd.Series, work: pd.DataFrame, parts) -> tuple[pd.Series, pd.Series]:
    """(compute %, memory %) of peak achieved by a method taking ``ms`` per row on ``parts``:
    useful FLOPs and bytes over its time. No hardware counters: padding and recomputation count
    as nothing, so this is a lower bound on what the units were busy with."""
    seconds = ms / 1e3
    flops = sum(work[f"flops_{p}"] for p in parts)
    moved = sum(work[f"bytes_{p}"] for p in parts)
    return (100 * flops / seconds / work["peak_flops_per_s"], 100 * moved / seconds / work["peak_bytes_per_s"])


def _derived_status(status: pd.DataFrame) -> pd.Series:
    """Worst status among the parts of each row (NaN where a part was not run at all)."""
    conditions = [status.eq(s).any(axis=1) for s in _STATUS_SEVERITY[:-1]] + [status.eq("ok").all(axis=1)]
    return pd.Series(np.select(conditions, _STATUS_SEVERITY, default=None), index=status.index).where(
        status.notna().all(axis=1))


def batch_timing(raw: pd.DataFrame) -> pd.Series:
    """Per batch (row_key), how its ok rows were timed: their ``timing`` values, sorted and joined
    with '; ' (rows without one: UNRECORDED_TIMING)."""
    ok = raw[raw["status"] == "ok"]
    modes = ok["timing"].fillna("").astype(str) if "timing" in ok.columns else pd.Series("", index=ok.index)
    modes = modes.replace("", UNRECORDED_TIMING)
    return modes.groupby(ok["row_key"]).agg(lambda s: "; ".join(sorted(set(s))))


def build_table(raw: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Wide table: one row per hybrid batch with times, statuses, speedups and the filter flag."""
    present = [c for c in WORKLOAD_COLUMNS + GPU_COLUMNS if c in raw.columns]
    batches = raw.groupby("row_key", sort=False)[present].first()
    batches["timing"] = batch_timing(raw).reindex(batches.index)
    # Never use the timings of a method that failed its check or errored on a row.
    ms = raw[raw["status"] == "ok"].pivot(index="row_key", columns="method", values="median_ms")
    status = raw.pivot(index="row_key", columns="method", values="status")
    methods = list(raw["method"].unique())
    ms = ms.reindex(index=batches.index, columns=methods).astype(float)
    status = status.reindex(index=batches.index, columns=methods)

    for name, parts in DERIVED.items():
        if name in methods or not all(p in methods for p in parts):
            continue
        ms[name] = ms[list(parts)].sum(axis=1, min_count=len(parts))
        status[name] = _derived_status(status[list(parts)])
        methods.append(name)

    baseline = meta["baseline"]
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} is neither a timed nor a derived method here; "
                         f"methods: {methods}")

    fraction = meta["min_part_fraction"]
    if fraction == 0:
        kept = pd.Series(True, index=batches.index)
    elif not all(m in methods for m in FILTER_PARTS):
        warnings.warn(f"the filter needs {FILTER_PARTS}, which this experiment does not time; keeping "
                      f"every row (set filter: {{min_part_fraction: 0}} in the YAML to say so)", stacklevel=2)
        kept = pd.Series(True, index=batches.index)
    else:
        total = ms[FILTER_TOTAL]
        kept = ms[FILTER_PARTS[0]].ge(fraction * total) & ms[FILTER_PARTS[1]].ge(fraction * total)

    work = work_and_peaks(batches)
    limit_ms = physical_limit_ms(batches, work)
    achieved = {m: achieved_utilization(ms[m], work, method_parts(m, meta.get("method_of", {}).get(m)))
                for m in methods}
    # the best peer is the fastest of all of BEST_PEERS: an experiment that times only some of them
    # has none (a row where a peer failed takes the fastest of those that ran)
    has_peers = all(m in methods for m in BEST_PEERS)
    columns = {
        **{f"ms_{m}": ms[m] for m in methods},
        **{f"status_{m}": status[m] for m in methods},
        "kept": kept,
        "best_peer_ms": ms[list(BEST_PEERS)].min(axis=1) if has_peers else np.nan,
        "limit_ms": limit_ms,
        **{f"speedup_{m}": ms[baseline] / ms[m] for m in methods},
        **{f"limit_fraction_{m}": limit_ms / ms[m] for m in methods},
        **{f"achieved_compute_pct_{m}": achieved[m][0] for m in methods},
        **{f"achieved_memory_pct_{m}": achieved[m][1] for m in methods},
    }
    table = pd.concat([batches, pd.DataFrame(columns, index=batches.index)], axis=1)
    return table.reset_index()


def ncu_columns(profile: pd.DataFrame) -> pd.DataFrame:
    """Long ncu CSV (experiments.profile) -> per row_key columns ``ncu_<metric>_<method>`` (metric
    shortened to its base name, e.g. ncu_dram__throughput_POD) and ``ncu_status_<method>``."""
    ok = profile[profile["status"] == "ok"].copy()
    base = ok["metric"].str.split(".").str[0]
    ok["column"] = base.where(base.str.startswith("ncu_"), "ncu_" + base) + "_" + ok["method"]
    wide = ok.pivot_table(index="row_key", columns="column", values="value", aggfunc="first")
    status = profile.groupby(["row_key", "method"])["status"].first().unstack("method")
    status.columns = [f"ncu_status_{m}" for m in status.columns]
    return pd.concat([wide, status], axis=1)


def table_methods(table: pd.DataFrame) -> list[str]:
    """Methods of a wide table, in column order."""
    return [c.removeprefix("ms_") for c in table.columns if c.startswith("ms_")]


def method_role(method: str, baseline: str, registered: str | None = None) -> str:
    """'baseline', 'part' (times one phase only, e.g. FA_prefill) or 'method' (runs the whole batch).
    A labelled variant is judged by the name of the method it runs (``registered``), not its label."""
    if method == baseline:
        return "baseline"
    if is_part(method, registered):
        return "part"
    return "method"


def _median_rate(kept: pd.DataFrame, pct_column: str, peak: pd.Series, unit: float) -> float:
    """Median over rows of (percent of peak) x peak, in ``unit`` per second (NaN without the column)."""
    if pct_column not in kept:
        return np.nan
    return (kept[pct_column] / 100 * peak / unit).median()


def summarize(table: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Per method over kept rows: speedup statistics, fraction slower than the baseline, fraction at
    or below the best peer, median fraction of the physical limit, median achieved TFLOP/s and TB/s
    of useful work on the parts the method computes (for a part alone: its rate, e.g. our prefill
    against FlashInfer's). ``n_failed`` / ``n_error`` count rows over the whole table (kept or not),
    since a failure is never filtered away."""
    kept = table[table["kept"]]
    names = kept["gpu_name"].astype(object).fillna("") if "gpu_name" in kept else pd.Series("", index=kept.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown GPU already warned in build_table
        peaks = pd.DataFrame([gpu_peaks(n) for n in names], index=kept.index, columns=["bytes", "flops"])
    gpu = "; ".join(sorted(map(str, table["gpu_name"].dropna().unique()))) if "gpu_name" in table else ""
    sms = "; ".join(sorted(map(str, table["sm_count"].dropna().astype(int).unique()))) if "sm_count" in table else ""
    records = []
    for m in table_methods(table):
        speedup = kept[f"speedup_{m}"].dropna()
        both = kept[[f"ms_{m}", "best_peer_ms"]].dropna()
        records.append({
            "method": m,
            "role": method_role(m, meta["baseline"], meta.get("method_of", {}).get(m)),
            "n": len(speedup),
            "mean_speedup": speedup.mean(),
            "median_speedup": speedup.median(),
            "min_speedup": speedup.min(),
            "max_speedup": speedup.max(),
            "frac_slower": (speedup < 1.0).mean() if len(speedup) else np.nan,
            "frac_at_or_below_best_peer": (both[f"ms_{m}"] <= both["best_peer_ms"]).mean() if len(both) else np.nan,
            "median_limit_fraction": kept[f"limit_fraction_{m}"].median(),
            "median_tflop_s": _median_rate(kept, f"achieved_compute_pct_{m}", peaks["flops"], 1e12),
            "median_tb_s": _median_rate(kept, f"achieved_memory_pct_{m}", peaks["bytes"], 1e12),
            "n_failed": int(table[f"status_{m}"].eq("failed_check").sum()),
            "n_error": int(table[f"status_{m}"].eq("error").sum()),
            "gpu_name": gpu,
            "sm_count": sms,
        })
    return pd.DataFrame.from_records(records)


def main(argv=None) -> None:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="experiment YAML (for baseline and filter)")
    ap.add_argument("--raw", nargs="+", required=True, help="raw shard CSVs")
    ap.add_argument("--out-table", required=True, type=Path)
    ap.add_argument("--out-summary", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="apply the experiment's smoke overrides")
    ap.add_argument("--ncu", type=Path, help="long ncu CSV of experiments.profile to join (optional)")
    args = ap.parse_args(argv)

    meta = read_meta(args.experiment, smoke=args.smoke)
    # Everything is computed (and every raw line checked) before anything is written.
    table = build_table(load_raw(args.raw, meta["name"]), meta)
    if args.ncu is not None:
        table = table.join(ncu_columns(pd.read_csv(args.ncu)), on="row_key")
    summary = summarize(table, meta)
    written = []
    for path, frame in ((args.out_table, table), (args.out_summary, summary)):
        # 6 significant digits: far below the timing noise, and half the size of full precision
        written.append(write_csv(frame, path, index=False, float_format="%.6g"))
    print(f"{meta['name']}: {len(table)} hybrid batches, {int(table['kept'].sum())} kept; "
          + "; ".join(f"{'wrote' if w else 'unchanged:'} {p}"
                      for w, p in zip(written, (args.out_table, args.out_summary))))


if __name__ == "__main__":
    main()
