"""SM clock and board power while each method of an experiment runs on its own for a sustained while.

    python -m experiments.power EXPERIMENT.yaml --out CSV [--methods A,B] [--rows K] [--seconds S]

Why: on the H100 the figure-11 attention batches run at the board's power cap (nvidia-smi reports
the software power-cap throttle and SM clocks from 1410 to 1980 MHz during pod_ctas_rule). A fused
launch that keeps the tensor cores and HBM busy at once may draw more power than either part alone
and so run at a lower clock, which would eat into what co-location gains. For each (row, method)
the method is checked against the reference attention and timed briefly (the sweep core's
``run_method``), then timed again over about ``seconds`` while ``nvidia-smi`` samples the clocks and
the power every 100 ms. One CSV line per (row, method) gives both per-call times and the median SM
clock and power of the samples after the first quarter of the window (the clock settles after a
ramp). Re-running with the same --out resumes (the sweep core's resumable CSV).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
COLUMNS = ["experiment", "row_key", "method", "status", "reason", "median_ms_short", "median_ms_sustained",
           "calls_sustained", "sm_clock_mhz_median", "sm_clock_mhz_min", "power_w_median", "temperature_c_max",
           "throttle_reasons", "samples"]
SHORT_TIMING = dict(warmup=2, repeats=5, calls=5)
SAMPLE_MS = 100


def parse_samples(lines: list[str]) -> list[tuple[float, float, float, str]]:
    """(SM MHz, W, deg C, throttle bitmask) per ``nvidia-smi --format=csv,noheader,nounits`` line."""
    out = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            out.append((float(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
        except ValueError:
            continue  # "[N/A]" or a truncated last line
    return out


def summarize_samples(samples, settle_fraction: float = 0.25) -> dict:
    """Medians over the samples after the first ``settle_fraction`` of the window."""
    kept = samples[int(len(samples) * settle_fraction):]
    if not kept:
        return {"samples": 0}
    return {"sm_clock_mhz_median": statistics.median(s[0] for s in kept),
            "sm_clock_mhz_min": min(s[0] for s in kept),
            "power_w_median": statistics.median(s[1] for s in kept),
            "temperature_c_max": max(s[2] for s in kept),
            "throttle_reasons": " ".join(sorted({s[3] for s in kept})), "samples": len(kept)}


def sustained_calls(median_ms: float, seconds: float, repeats: int = 10) -> int:
    """Calls per repeat so that ``repeats`` repeats of a call of ``median_ms`` last about ``seconds``."""
    return max(1, int(seconds * 1e3 / repeats / median_ms))


def probe_experiment(experiment: str, out: str, methods=None, max_rows: int | None = None,
                     seconds: float = 1.5, progress: bool = True) -> dict:
    """Probe every (row, method) of ``experiment`` (the first ``max_rows`` rows) into ``out``;
    returns counts per status written now."""
    from experiments.sweep import configure_device_env

    configure_device_env("cuda")
    import torch
    from tqdm import tqdm

    from experiments import grid as G
    from experiments.sweep import ResumableCSV, count, create_methods, run_method, seed
    from kernels.reference import reference_outputs
    from kernels.workload import HybridBatch

    if not torch.cuda.is_available():
        raise G.ExperimentError("the power probe needs a CUDA GPU and nvidia-smi")
    dev = torch.device("cuda")
    exp = G.load_experiment(experiment)
    labels = list(methods) if methods else [m.label for m in exp.methods]
    rows = G.expand(exp, *G.device_sizes(exp, dev))[:max_rows]
    insts = create_methods(exp, labels, dev)
    sink = ResumableCSV(out, COLUMNS)
    done = sink.done()
    sink.write_header()
    counts: dict = {}
    for row in tqdm(rows, unit="row", file=sys.stderr, disable=not progress):
        todo = [lab for lab in labels if (row.row_key, lab) not in done]
        if not todo:
            continue
        batch = HybridBatch.allocate(row.spec, device=dev, seed=seed(row.group_key),
                                     prefill_kv_cap=row.prefill_kv_cap)
        ref = reference_outputs(batch)
        for lab in todo:
            line = {"experiment": exp.name, "row_key": row.row_key, "method": lab}
            _, inst, reason = insts[lab]
            if reason is not None:
                line.update(status="unavailable", reason=reason)
            else:
                short = run_method(inst, batch, lambda: ref, dev, SHORT_TIMING)
                if short["status"] != "ok":
                    line.update(status=short["status"], reason=short["reason"])
                else:
                    line.update(_sustained(inst, batch, ref, dev, short["median_ms"], seconds))
            sink.append([line])
            count(counts, line["status"])
        batch = ref = None
        torch.cuda.empty_cache()
    return counts


def _sustained(inst, batch, ref, dev, median_ms: float, seconds: float) -> dict:
    """Time ``inst`` over about ``seconds`` while nvidia-smi samples clocks and power."""
    from experiments.sweep import run_method

    calls = sustained_calls(median_ms, seconds)
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                            "-lms", str(SAMPLE_MS)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.05)  # the first sample before the first call
    try:
        long = run_method(inst, batch, lambda: ref, dev, dict(warmup=0, repeats=10, calls=calls))
    finally:
        smi.terminate()
    samples = parse_samples(smi.communicate()[0].splitlines())
    return {"status": long["status"], "reason": long["reason"], "median_ms_short": median_ms,
            "median_ms_sustained": long.get("median_ms", ""), "calls_sustained": calls,
            **summarize_samples(samples)}


def main(argv=None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.power", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--out", required=True, help="CSV to append to (resumed if it exists)")
    ap.add_argument("--methods", help="comma-separated labels (default: the YAML's)")
    ap.add_argument("--rows", type=int, help="only the first K rows")
    ap.add_argument("--seconds", type=float, default=1.5, help="sustained window per (row, method)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from experiments.sweep import labels_arg, report

    return report(args.out, lambda: probe_experiment(args.experiment, args.out, labels_arg(args.methods), args.rows,
                                                     args.seconds, not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
