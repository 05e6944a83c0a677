"""Delete the sweep lines of our one-launch methods whose recorded plan (impl column) is no longer
the plan the current code makes, plus the lines of paired methods on the same batches, so that
the runner's resume times exactly those again, side by side. With --noisy F, the batches where a
line of --methods has an IQR above F of its median are dropped instead (sporadic slow samples).

    python scripts/drop_stale_plans.py results/raw/figure11 --methods POD,OURS_CTA --pair OURS_Serial [--dry-run]
    python scripts/drop_stale_plans.py results/raw/figure11 --methods POD,OURS_CTA,OURS_Serial --noisy 0.05

Lines are kept byte for byte; only whole lines are removed.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os

from experiments.grid import resolve_model
from kernels.pod.plan import make_plan
from kernels.registry import create
from kernels.workload import BatchSpec


def current_impl(rec: dict) -> str:
    """The impl text the method of ``rec`` would record for its batch with the current code."""
    # labels of the figure-11 sweep are registry names; options hold any knob settings
    inst = create(rec["method"], **json.loads(rec["options"] or "{}"))
    spec = BatchSpec(resolve_model(rec["model"]), rec["dtype"], int(rec["prefill_len"]), int(rec["prefill_kv_len"]),
                     int(rec["decode_batch"]), int(rec["decode_ctx"]), int(rec["page_size"]))
    inst.last_plan = make_plan(spec, inst.mode, int(rec["sm_count"]), inst.config).as_dict()
    return str(inst.info()["impl"])


def stale_rows(paths: list, methods: set) -> set:
    """row_keys where a line of ``methods`` records a plan other than the current one."""
    stale = set()
    for path in paths:
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                if rec["method"] in methods and rec["status"] == "ok" and rec["impl"] != current_impl(rec):
                    stale.add(rec["row_key"])
    return stale


def noisy_rows(paths: list, methods: set, fraction: float) -> set:
    """row_keys where an ``ok`` line of ``methods`` has iqr_ms > ``fraction`` x median_ms."""
    noisy = set()
    for path in paths:
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                if (rec["method"] in methods and rec["status"] == "ok"
                        and float(rec["iqr_ms"]) > fraction * float(rec["median_ms"])):
                    noisy.add(rec["row_key"])
    return noisy


def drop_lines(path: str, keys: set, methods: set, dry_run: bool) -> int:
    """Remove the lines of ``methods`` on ``keys`` from ``path``; returns how many."""
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    i_key, i_method = header.index("row_key"), header.index("method")
    keep = [lines[0]]
    for line in lines[1:]:
        rec = next(csv.reader([line]))
        if not (rec[i_key] in keys and rec[i_method] in methods):
            keep.append(line)
    n = len(lines) - len(keep)
    if n and not dry_run:
        with open(path, "w", newline="") as f:
            f.writelines(keep)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_dir")
    ap.add_argument("--methods", required=True, help="comma-separated method labels of our one-launch family")
    ap.add_argument("--pair", default="", help="comma-separated labels to re-time on the same batches")
    ap.add_argument("--noisy", type=float, help="drop batches with a line whose IQR exceeds this fraction "
                    "of its median, instead of those with a stale plan")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    methods = {m for m in args.methods.split(",") if m}
    pair = {m for m in args.pair.split(",") if m}
    paths = sorted(glob.glob(os.path.join(args.raw_dir, "*.csv")))
    keys = stale_rows(paths, methods) if args.noisy is None else noisy_rows(paths, methods, args.noisy)
    total = sum(drop_lines(p, keys, methods | pair, args.dry_run) for p in paths)
    why = "with a changed plan" if args.noisy is None else f"with an IQR above {args.noisy:g} of the median"
    print(f"{len(keys)} batches {why}; {'would drop' if args.dry_run else 'dropped'} {total} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
