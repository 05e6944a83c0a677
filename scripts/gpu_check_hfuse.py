"""GPU check of HFuse (kernels/hfuse, Gluon): correctness on odd shapes, then timing against
OURS_Serial on the paper's C0 and yi-6b batches. Prints a table; writes CSV (and the tracebacks)
into --out. Every shape is tried on its own: an exception (compile errors included) is printed
with its full traceback and recorded, and the run goes on. Stops starting new work after
--budget-s seconds so that it ends within ~4 minutes; a watchdog writes what it has and exits
(status 3) if one step hangs (a deadlocked kernel) or the run passes --total-timeout-s.

    python scripts/gpu_check_hfuse.py --out results/hfuse_check
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from experiments.timing import time_callable  # noqa: E402
from kernels.reference import check_outputs, reference_outputs  # noqa: E402
from kernels.registry import create  # noqa: E402
from kernels.workload import BatchSpec, HybridBatch, ModelShape  # noqa: E402

# name: (q heads, kv heads, head dim, dtype, prefill len, prefill kv len, decodes, decode ctx, HFuse options)
ODD = {
    "d128-fp16-nosplit": (12, 4, 128, "float16", 77, 300, 5, 333, {"prefill_split": 1, "decode_split": 1}),
    "d64-fp16-mha": (4, 4, 64, "float16", 77, 300, 5, 333, {}),
    "d64-bf16-gqa4": (8, 2, 64, "bfloat16", 77, 300, 5, 333, {}),
    "d128-fp16-gqa3": (12, 4, 128, "float16", 77, 300, 5, 333, {}),
    "d128-bf16-gqa8": (32, 4, 128, "bfloat16", 77, 300, 5, 333, {}),
    "d256-fp16-gqa5": (10, 2, 256, "float16", 77, 300, 5, 333, {}),
    "d256-bf16-gqa1": (4, 4, 256, "bfloat16", 77, 300, 5, 333, {}),
    "d128-fp16-mqa8": (8, 1, 128, "float16", 77, 300, 5, 333, {}),
    "d128-fp16-gqa64": (64, 1, 128, "float16", 77, 300, 5, 333, {}),       # 64-row decode tiles
    "d128-bf16-gqa80": (80, 1, 128, "bfloat16", 45, 170, 3, 99, {}),       # two decode tiles per group
    "d128-fp16-split3/4": (12, 4, 128, "float16", 77, 300, 5, 333, {"prefill_split": 3, "decode_split": 4}),
    "d128-fp16-lq=lk,ctx1": (8, 2, 128, "float16", 129, 129, 3, 1, {}),
    "d128-fp16-prefill-only": (8, 2, 128, "float16", 200, 1000, 0, 0, {}),
    "d128-fp16-decode-only": (8, 2, 128, "float16", 0, 0, 7, 4097, {}),
    "d128-bf16-long": (16, 4, 128, "bfloat16", 300, 5000, 17, 2999, {}),
    "d256-fp16-gqa4-long": (16, 4, 256, "float16", 257, 3001, 9, 2049, {}),
    "d128-fp16-stages1": (12, 4, 128, "float16", 77, 300, 5, 333, {"prefill_stages": 1, "decode_stages": 1}),
    "d64-bf16-stages3/4": (8, 2, 64, "bfloat16", 77, 300, 5, 333, {"prefill_stages": 3, "decode_stages": 4}),
    "cps2-d128-fp16-gqa3": (12, 4, 128, "float16", 77, 300, 5, 333, {"ctas_per_sm": 2}),
    "cps2-d64-bf16-gqa4": (8, 2, 64, "bfloat16", 77, 300, 5, 333, {"ctas_per_sm": 2}),
    "cps2-d256-fp16-gqa5": (10, 2, 256, "float16", 77, 300, 5, 333, {"ctas_per_sm": 2}),
    "cps2-d128-bf16-long": (16, 4, 128, "bfloat16", 300, 5000, 17, 2999, {"ctas_per_sm": 2}),
    "cps2-d256-fp16-gqa32": (32, 1, 256, "float16", 77, 300, 5, 333, {"ctas_per_sm": 2}),  # 1-stage decode ring
}
PAPER = {  # q heads, kv heads, prefill len, prefill kv len, decodes, decode ctx (head dim 128, fp16)
    "C0": (16, 4, 1024, 12288, 80, 12288),
    "yi-6b": (32, 4, 512, 8192, 54, 16384),
}
TIMED = {  # label: (registered method, options, part of the batch it runs on)
    "HFuse": ("HFuse", {}, "both"),
    "HFuse_cps2": ("HFuse", {"ctas_per_sm": 2}, "both"),
    "OURS_Serial": ("OURS_Serial", {}, "both"),
    "HFuse(prefill only)": ("HFuse", {}, "prefill"),
    "HFuse(decode only)": ("HFuse", {}, "decode"),
    "OURS_prefill": ("OURS_prefill", {}, "both"),
    "OURS_decode": ("OURS_decode", {}, "both"),
}
TIMING = dict(warmup=2, repeats=5, calls=10)


def part_batch(batch: HybridBatch, part: str) -> HybridBatch:
    """The same tensors seen as a prefill-only or decode-only batch (no copy)."""
    s = batch.spec
    if part == "prefill":
        return dataclasses.replace(batch, spec=s.replace(decode_batch=0, decode_ctx=0), extras={})
    if part == "decode":
        return dataclasses.replace(batch, spec=s.replace(prefill_len=0, prefill_kv_len=0),
                                   q=batch.q[s.prefill_len:], extras={})
    return batch


class Progress:
    """What the run is doing, and since when; a watchdog thread ends the process (after writing
    what it has) when one step hangs longer than ``step_s`` or the whole run passes ``total_s``:
    a deadlocked kernel would otherwise block the CUDA synchronisation forever."""

    def __init__(self, step_s: float, total_s: float, dump):
        self.t0 = time.time()
        self.step, self.since = "start", self.t0
        self.step_s, self.total_s, self.dump = step_s, total_s, dump
        threading.Thread(target=self._watch, daemon=True).start()

    def at(self, step: str):
        self.step, self.since = step, time.time()

    def _watch(self):
        while True:
            time.sleep(1.0)
            now = time.time()
            why = None
            if now - self.since > self.step_s:
                why = f"step '{self.step}' has run {now - self.since:.0f} s (> {self.step_s:.0f} s): a hang?"
            elif now - self.t0 > self.total_s:
                why = f"the run has taken {now - self.t0:.0f} s (> {self.total_s:.0f} s), now in '{self.step}'"
            if why:
                print(f"\n!!! WATCHDOG: {why} -- writing partial results and exiting", flush=True)
                try:
                    self.dump(f"WATCHDOG: {why}")
                finally:
                    os._exit(3)


def run_method(label, name, opts, batch, ref, timing, errors, progress=None):
    """Prepare, run, check (and time) one method; never raises."""
    row = dict(method=label, ok=False)
    try:
        m = create(name, **opts)
        why = m.unavailable_reason(batch.device)
        if why:
            row.update(status="unavailable", reason=why)
            return row
        t0 = time.time()
        fn = m.prepare(batch)
        out = fn()
        torch.cuda.synchronize()
        row["first_call_s"] = round(time.time() - t0, 2)
        parts = m.checked_parts(batch)
        chk = check_outputs(out, {p: ref[p] for p in parts}, batch.spec.dtype, parts)
        row.update(ok=chk.ok, status="ok" if chk.ok else "WRONG", rel_err=chk.rel_err, max_abs_err=chk.max_abs_err,
                   reason=chk.reason, impl=m.info().get("impl", ""))
        if name == "HFuse":
            try:
                row.update(fn.kernel_stats())
            except Exception as e:  # noqa: BLE001 - statistics are optional
                row["stats_error"] = repr(e)[:200]
        if chk.ok and timing:
            if progress:
                progress.at(f"timing {label}")
            t = time_callable(fn, batch.device, **timing)
            row.update(median_ms=t.median_ms, min_ms=t.min_ms, max_ms=t.max_ms)
    except Exception as e:  # noqa: BLE001 - report and go on
        tb = traceback.format_exc()
        print(f"\n!!! {label} failed:\n{tb}", flush=True)
        errors.append(f"=== {label} on {batch.spec}\n{tb}")
        row.update(status="ERROR", reason=f"{type(e).__name__}: {str(e)[:300]}")
    return row


def write_results(rows, errors, out_dir: Path, t_start: float, note: str = "") -> int:
    """Write the CSV and the tracebacks, print the table; returns the number of rows not ok."""
    import pandas as pd

    df = pd.DataFrame(rows if rows else [dict(config="-", method="-", status="no rows")])
    csv = out_dir / "hfuse_check.csv"
    df.to_csv(csv, index=False)
    (out_dir / "errors.txt").write_text((note + "\n" if note else "") + ("\n".join(errors) if errors else "no errors\n"))
    cols = [c for c in ("config", "method", "status", "rel_err", "median_ms", "n_regs", "n_spills", "shared", "impl",
                        "reason") if c in df]
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 90):
        print(df[cols].to_string(index=False))
    for cname in PAPER:
        sub = df[df["config"] == cname] if "config" in df else df.iloc[:0]
        if "median_ms" in sub and sub["median_ms"].notna().any():
            ms = dict(zip(sub["method"], sub["median_ms"]))
            if ms.get("HFuse") and ms.get("OURS_Serial"):
                print(f"{cname}: HFuse {ms['HFuse']:.3f} ms vs OURS_Serial {ms['OURS_Serial']:.3f} ms "
                      f"(speedup {ms['OURS_Serial'] / ms['HFuse']:.2f}x)")
    n_bad = int((df["status"] != "ok").sum()) if "status" in df else len(df)
    print(f"{note}\nwrote {csv} ({len(df)} rows, {n_bad} not ok) and {out_dir / 'errors.txt'} "
          f"in {time.time() - t_start:.0f} s", flush=True)
    return n_bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="hfuse_check", help="directory for hfuse_check.csv and errors.txt")
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="start no new odd shape after this many seconds (the paper batches get 40 s more)")
    ap.add_argument("--step-timeout-s", type=float, default=90.0, help="watchdog: longest one step may take")
    ap.add_argument("--total-timeout-s", type=float, default=235.0, help="watchdog: longest the whole run may take")
    ap.add_argument("--skip-odd", action="store_true")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated shape names (odd or paper) to run")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible")
        sys.exit(2)
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"{props.name}: {props.multi_processor_count} SMs, sm_{props.major}{props.minor}, torch {torch.__version__}",
          flush=True)
    only = set(filter(None, args.only.split(",")))
    t_start = time.time()
    rows, errors = [], []
    progress = Progress(args.step_timeout_s, args.total_timeout_s,
                        lambda note: write_results(list(rows), list(errors), out_dir, t_start, note))

    def over_budget(name, budget):
        if time.time() - t_start > budget:
            rows.append(dict(config=name, method="-", ok=False, status="SKIPPED (time budget)"))
            print(f"skipping {name}: over the {budget:.0f} s budget", flush=True)
            return True
        return False

    if not args.skip_odd:
        for name, (hq, hkv, d, dt, lq, lk, bs, cl, opts) in ODD.items():
            if (only and name not in only) or over_budget(name, args.budget_s):
                continue
            progress.at(f"odd shape {name}")
            try:
                spec = BatchSpec(ModelShape(name, hq, hkv, d), dt, lq, lk, bs, cl, page_size=16)
                batch = HybridBatch.allocate(spec, dev, seed=1)
                ref = reference_outputs(batch)
            except Exception as e:  # noqa: BLE001
                tb = traceback.format_exc()
                print(f"\n!!! {name} setup failed:\n{tb}", flush=True)
                errors.append(f"=== setup {name}\n{tb}")
                rows.append(dict(config=name, method="HFuse", ok=False, status="ERROR", reason=repr(e)[:300]))
                continue
            r = run_method("HFuse", "HFuse", opts, batch, ref, None, errors, progress)
            r.update(config=name, options=json.dumps(opts))
            rows.append(r)
            print({k: r.get(k) for k in ("config", "status", "rel_err", "impl", "n_regs", "n_spills", "shared",
                                         "reason")}, flush=True)
            del batch, ref

    if not args.skip_paper:
        for cname, (hq, hkv, lq, lk, bs, cl) in PAPER.items():
            if (only and cname not in only) or over_budget(cname, args.budget_s + 40):
                continue
            progress.at(f"paper batch {cname}: allocation and reference")
            try:
                spec = BatchSpec(ModelShape(cname, hq, hkv, 128), "float16", lq, lk, bs, cl, page_size=16)
                batch = HybridBatch.allocate(spec, dev, seed=0)
                ref = reference_outputs(batch)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                tb = traceback.format_exc()
                print(f"\n!!! {cname} setup failed:\n{tb}", flush=True)
                errors.append(f"=== setup {cname}\n{tb}")
                rows.append(dict(config=cname, method="-", ok=False, status="ERROR", reason=repr(e)[:300]))
                continue
            for label, (name, opts, part) in TIMED.items():
                if time.time() - t_start > args.budget_s + 60:
                    rows.append(dict(config=cname, method=label, ok=False, status="SKIPPED (time budget)"))
                    continue
                progress.at(f"{cname}: {label}")
                r = run_method(label, name, opts, part_batch(batch, part), ref, TIMING, errors, progress)
                r.update(config=cname, options=json.dumps(opts))
                rows.append(r)
                print({k: r.get(k) for k in ("config", "method", "status", "rel_err", "median_ms", "impl",
                                             "n_regs", "n_spills", "shared", "reason")}, flush=True)
            del batch, ref
            torch.cuda.empty_cache()

    progress.at("writing results")
    n_bad = write_results(rows, errors, out_dir, t_start)
    sys.exit(1 if n_bad else 0)


if __name__ == "__main__":
    main()
