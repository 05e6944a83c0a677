"""Hardware-counter profile (Nsight Compute) of one call per (hybrid batch, method) of an experiment.

    python -m experiments.profile EXPERIMENT.yaml --out CSV [--journal CSV] [--methods A,B] [--ncu PATH] [--no-progress]

The experiment's ``profile:`` section names the ncu metrics (and optionally the method labels).
Each (row, method) runs in a child process of its own under ``ncu --profile-from-start off``: the
child prepares the method, checks its outputs against the reference, runs it once unprofiled (JIT,
autotuning), then once between cudaProfilerStart/Stop, so only that call's kernels are measured.
Clocks are left alone (``--clock-control none``), as for the timed runs.

The CSV is long: one line per (row_key, method, metric) holding the duration-weighted mean of the
metric over the call's kernels, plus a line ``ncu_time_ms`` (sum of kernel durations under the
profiler). A (row, method) that could not be profiled gets one line with an empty metric, its
status and the reason. Re-running with the same --out resumes. With --journal, lines are appended
to the journal as each (row, method) finishes (resumed the same way, never deleted) and --out is
written whole at the end, as experiments.run does: the workflow's way, so that a rerun profiles no
call that had finished.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TIME_METRIC = "gpu__time_duration.sum"
COLUMNS_HEAD = ["experiment", "row_key", "method", "metric", "value", "kernels", "status", "reason"]
CHILD_TIMEOUT_S = 600


def ncu_binary(explicit: str | None = None) -> str | None:
    """Path of Nsight Compute's command line: the given one, ``ncu`` on PATH, or under /opt/nvidia."""
    if explicit:
        return explicit if os.path.exists(explicit) or shutil.which(explicit) else None
    found = shutil.which("ncu")
    if found:
        return found
    import glob
    candidates = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu")) + sorted(glob.glob("/usr/local/cuda*/bin/ncu"))
    return candidates[-1] if candidates else None


def known_metric_bases(ncu: str) -> set | None:
    """Base metric names ncu knows on this machine's GPU (None if it could not say)."""
    try:
        r = subprocess.run([ncu, "--query-metrics", "--devices", "0"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    names = set(re.findall(r"^([a-z0-9_]+__[A-Za-z0-9_]+)", r.stdout, flags=re.M))
    return names or None


def parse_ncu_csv(text: str) -> list:
    """Rows of ncu's ``--csv --print-units base`` log as dicts (lines before the header dropped)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        return []
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def _number(text: str) -> float:
    return float(str(text).replace(",", ""))


def reduce_metrics(rows: list, metrics: list) -> tuple[dict, int]:
    """({metric: duration-weighted mean over kernels, 'ncu_time_ms': total}, kernel count) of one
    profiled call. Percentages of peak over a sequence of kernels average by time spent in each."""
    per_kernel: dict = {}
    for r in rows:
        try:
            value = _number(r["Metric Value"])
        except ValueError:  # "n/a": the metric does not apply to this kernel
            continue
        per_kernel.setdefault(r["ID"], {})[r["Metric Name"]] = value
    kernels = [k for k in per_kernel.values() if TIME_METRIC in k]
    total_ns = sum(k[TIME_METRIC] for k in kernels)
    out = {"ncu_time_ms": total_ns / 1e6} if kernels else {}
    for m in metrics:
        pairs = [(k[TIME_METRIC], k[m]) for k in kernels if m in k]
        weight = sum(w for w, _ in pairs)
        if pairs and weight > 0:
            out[m] = sum(w * v for w, v in pairs) / weight
    return out, len(kernels)


# ----------------------------------------------------------------------------- child (under ncu)

def child(experiment: str, row_key: str, label: str, result_path: str) -> int:
    """Run one (row, method) and profile one call; write {'status', 'reason'} to ``result_path``."""
    import torch

    from experiments import grid as G
    from kernels.reference import check_outputs, reference_outputs
    from kernels.registry import MethodUnavailable, create
    from kernels.workload import HybridBatch

    def finish(status, reason=""):
        with open(result_path, "w") as f:
            json.dump({"status": status, "reason": reason}, f)
        return 0

    dev = torch.device("cuda")
    exp = G.load_experiment(experiment)
    rows = G.expand(exp, *G.device_sizes(exp, dev))
    row = next(r for r in rows if r.row_key == row_key)
    ms = next(m for m in exp.methods if m.label == label)
    try:
        inst = create(ms.method, **ms.options)
        reason = inst.unavailable_reason(dev)
        if reason:
            return finish("unavailable", reason)
        batch = HybridBatch.allocate(row.spec, device=dev)
        fn = inst.prepare(batch)
        check = check_outputs(fn(), reference_outputs(batch), batch.spec.dtype, inst.checked_parts(batch))
        if not check.ok:
            return finish("failed_check", check.reason)
        fn()  # warm: nothing compiles or autotunes inside the profiled range
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    except MethodUnavailable as e:
        return finish("unavailable", str(e))
    except Exception as e:  # noqa: BLE001 - reported as this pair's result
        return finish("error", f"{type(e).__name__}: {e}"[:2000])
    return finish("ok")


# ----------------------------------------------------------------------------- parent

def profile_experiment(experiment: str, out: str, methods=None, ncu: str | None = None,
                       progress: bool = True, journal: str | None = None) -> dict:
    """Profile every (row, method) the experiment's ``profile:`` asks for into ``out``; returns
    counts per status written now. With ``journal`` lines go there as each (row, method) finishes
    and ``out`` is written whole at the end."""
    import contextlib

    import torch
    from tqdm import tqdm

    from experiments import grid as G
    from experiments.provenance import COLUMNS as PROV
    from experiments.provenance import provenance, stamp
    from experiments.sweep import WORKLOAD_COLUMNS, JournalLock, ResumableCSV, count, publish_rows

    exp = G.load_experiment(experiment)
    spec = exp.raw.get("profile")
    if not spec:
        raise G.ExperimentError(f"{experiment}: no profile: section (ncu_metrics) to profile")
    if not torch.cuda.is_available():
        raise G.ExperimentError("profiling needs a CUDA GPU; without one use the shipped results (`make figures`)")
    labels = spec.get("methods") or [m.label for m in exp.methods]
    unknown = sorted(set(labels) - {m.label for m in exp.methods})
    if unknown:
        raise G.ExperimentError(f"{experiment}: profile.methods: {', '.join(unknown)} are not method labels")
    if methods:
        labels = [lab for lab in labels if lab in set(methods)]
    dev = torch.device("cuda")
    rows = G.expand(exp, *G.device_sizes(exp, dev))
    prov = provenance(dev)

    ncu_path = ncu_binary(ncu)
    metrics, dropped = list(spec["ncu_metrics"]), []
    if ncu_path:
        bases = known_metric_bases(ncu_path)
        if bases is not None:
            dropped = [m for m in metrics if m.split(".")[0] not in bases]
            metrics = [m for m in metrics if m not in dropped]
    note = f"ncu does not know {', '.join(dropped)} on this GPU" if dropped else ""

    from types import SimpleNamespace

    from kernels.registry import MethodUnavailable, create

    def lacks_part(row, lab) -> str:
        """Why ``lab`` has nothing to profile on ``row`` (a part it computes is missing), else ''.
        Checked here so that no child process is started for it."""
        ms = next(m for m in exp.methods if m.label == lab)
        try:
            create(ms.method, **ms.options).require_parts(SimpleNamespace(spec=row.spec))
        except MethodUnavailable as e:
            return str(e)
        return ""

    header = COLUMNS_HEAD + WORKLOAD_COLUMNS + PROV
    with JournalLock(journal) if journal else contextlib.nullcontext():
        # a (row, method) has one line per metric; a kill mid-write leaves at most a partial last line
        sink = ResumableCSV(journal or out, header, lines="many", lineterminator="\r\n")
        done = sink.done()
        sink.write_header()
        counts: dict = {}
        todo = [(r, lab) for r in rows for lab in labels if (r.row_key, lab) not in done]
        for row, lab in tqdm(todo, file=sys.stderr, disable=not progress, unit="call", desc=f"ncu {exp.name}"):
            base = {"experiment": exp.name, **row.fields(), "method": lab, **stamp(prov)}
            missing = lacks_part(row, lab)
            if missing:
                status, reason, values, kernels = "unavailable", missing, {}, 0
            elif ncu_path is None:
                status, reason, values, kernels = ("unavailable", "Nsight Compute (ncu) not found: install it "
                                                   "(part of the CUDA toolkit) or pass --ncu PATH", {}, 0)
            else:
                status, reason, values, kernels = _profile_one(ncu_path, experiment, row.row_key, lab, metrics)
            if status == "ok":
                lines = [{**base, "metric": k, "value": v, "kernels": kernels, "status": "ok", "reason": note}
                         for k, v in values.items()]
            else:
                lines = [{**base, "metric": "", "value": "", "kernels": kernels, "status": status,
                          "reason": reason}]
            sink.append(lines)
            count(counts, status)
        if journal:
            publish_rows(journal, out, {(r.row_key, lab) for r in rows for lab in labels}, header)
    return counts


def _profile_one(ncu: str, experiment: str, row_key: str, label: str, metrics: list):
    """(status, reason, values, kernel count) of one (row, method) under ncu."""
    with tempfile.TemporaryDirectory() as tmp:
        log, result = os.path.join(tmp, "ncu.csv"), os.path.join(tmp, "result.json")
        cmd = [ncu, "--csv", "--print-units", "base", "--log-file", log, "--profile-from-start", "off",
               "--clock-control", "none", "--target-processes", "all",
               "--metrics", ",".join([TIME_METRIC, *metrics]),
               sys.executable, "-m", "experiments.profile", experiment, "--child",
               "--row-key", row_key, "--method", label, "--result", result]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return "error", f"ncu run timed out after {CHILD_TIMEOUT_S} s", {}, 0
        if not os.path.exists(result):
            tail = (r.stderr or r.stdout or "").strip().splitlines()[-5:]
            return "error", f"ncu exited {r.returncode} before the method ran: {' | '.join(tail)}"[:2000], {}, 0
        with open(result) as fh:
            res = json.load(fh)
        if res["status"] != "ok":
            return res["status"], res["reason"], {}, 0
        text = open(log).read() if os.path.exists(log) else ""
        values, kernels = reduce_metrics(parse_ncu_csv(text), metrics)
        if not kernels:
            tail = " | ".join(text.strip().splitlines()[-3:] + (r.stderr or "").strip().splitlines()[-3:])
            return "error", f"ncu recorded no kernel in the profiled call: {tail}"[:2000], {}, 0
        return "ok", "", values, kernels


def main(argv=None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--out", help="long CSV; without --journal lines are appended to it as they finish "
                                  "(resumed if it exists)")
    ap.add_argument("--journal", help="append lines here as they finish (resumed if it exists, never deleted) "
                                      "and write --out in one piece at the end")
    ap.add_argument("--stop-with-parent", action="store_true",
                    help="exit when the parent process (the workflow) dies instead of running on as an orphan")
    ap.add_argument("--methods", help="comma-separated labels (default: the profile: section's, else all)")
    ap.add_argument("--ncu", help="path of ncu (default: on PATH or under /opt/nvidia)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--row-key", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.experiment, args.row_key, args.method, args.result)
    from experiments.sweep import labels_arg, report, stop_with_parent

    if not args.out:
        print("error: --out CSV is required", file=sys.stderr)
        return 2
    if args.stop_with_parent:
        stop_with_parent()
    return report(args.out, lambda: profile_experiment(args.experiment, args.out, labels_arg(args.methods), args.ncu,
                                                       not args.no_progress, journal=args.journal))


if __name__ == "__main__":
    sys.exit(main())
