"""SM clock and board power while each method runs on its own for a sustained while.

    python scripts/gpu_power_probe.py EXPERIMENT.yaml --out CSV [--methods A,B] [--rows K] [--seconds S]

Why: on the H100 the figure-11 attention batches run at the board's power cap (nvidia-smi reports
the software power-cap throttle and SM clocks from 1410 to 1980 MHz during pod_ctas_rule). A
fused launch that keeps the tensor cores and HBM busy at once may draw more power than either part
alone and so run at a lower clock, which would eat into what co-location gains. For each (row,
method) the method is checked against the reference attention and timed with the harness's timing
utility over about ``seconds`` while ``nvidia-smi`` samples the clocks and the power every 100 ms;
one CSV line per (row, method) gives the sustained per-call time and the median SM clock and power
of the samples after the first quarter of the window (the clock settles after a ramp).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
COLUMNS = ["experiment", "row_key", "method", "status", "reason", "median_ms_short", "median_ms_sustained",
           "calls_sustained", "sm_clock_mhz_median", "sm_clock_mhz_min", "power_w_median", "temperature_c_max",
           "throttle_reasons", "samples"]


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
    import statistics
    kept = samples[int(len(samples) * settle_fraction):]
    if not kept:
        return {"samples": 0}
    reasons = sorted({s[3] for s in kept})
    return {"sm_clock_mhz_median": statistics.median(s[0] for s in kept),
            "sm_clock_mhz_min": min(s[0] for s in kept),
            "power_w_median": statistics.median(s[1] for s in kept),
            "temperature_c_max": max(s[2] for s in kept),
            "throttle_reasons": " ".join(reasons), "samples": len(kept)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", help="comma-separated labels (default: the YAML's)")
    ap.add_argument("--rows", type=int, help="only the first K rows")
    ap.add_argument("--seconds", type=float, default=1.5, help="sustained window per (row, method)")
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from experiments import grid as G
    from experiments.sweep import create_methods, run_method, seed
    from kernels.reference import reference_outputs
    from kernels.workload import HybridBatch

    if not torch.cuda.is_available():
        sys.exit("gpu_power_probe needs a CUDA GPU and nvidia-smi")
    dev = torch.device("cuda")
    exp = G.load_experiment(args.experiment)
    labels = args.methods.split(",") if args.methods else [m.label for m in exp.methods]
    props = torch.cuda.get_device_properties(dev)
    rows = G.expand(exp, float(props.total_memory), props.multi_processor_count)[:args.rows]
    insts = create_methods(exp, labels, dev)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in tqdm(rows, unit="row", file=sys.stderr):
            batch = HybridBatch.allocate(row.spec, device=dev, seed=seed(row.group_key),
                                         prefill_kv_cap=row.prefill_kv_cap)
            ref = reference_outputs(batch)
            for lab in labels:
                line = {"experiment": exp.name, "row_key": row.row_key, "method": lab}
                _, inst, reason = insts[lab]
                if reason is not None:
                    w.writerow({**line, "status": "unavailable", "reason": reason})
                    continue
                short = run_method(inst, batch, lambda: ref, dev, dict(warmup=2, repeats=5, calls=5))
                if short["status"] != "ok":
                    w.writerow({**line, "status": short["status"], "reason": short["reason"]})
                    continue
                calls = max(1, int(args.seconds * 1e3 / 10 / short["median_ms"]))
                smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                        "-lms", "100"], stdout=subprocess.PIPE, text=True)
                time.sleep(0.05)
                long = run_method(inst, batch, lambda: ref, dev, dict(warmup=0, repeats=10, calls=calls))
                smi.terminate()
                samples = parse_samples(smi.communicate()[0].splitlines())
                w.writerow({**line, "status": long["status"], "reason": long["reason"],
                            "median_ms_short": short["median_ms"], "median_ms_sustained": long.get("median_ms", ""),
                            "calls_sustained": calls, **summarize_samples(samples)})
                f.flush()
            batch = ref = None
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
