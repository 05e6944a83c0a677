"""Run an experiment (or one shard of it) and append one CSV line per (hybrid batch, method).

    python -m experiments.run EXPERIMENT.yaml --out CSV [--journal CSV] [--shard I/N] [--smoke]
        [--device cuda|cpu] [--max-rows K] [--methods A,B] [--gpu-memory-gb X] [--import-module MOD ...] [--list]

Shards are 0-based (I in 0..N-1) and deal whole groups round-robin; a shard may be empty (more
shards than groups) and then gets a header-only CSV. Re-running with the same --out (or --journal)
resumes: (row_key, method) pairs already in the file are skipped. The workflow passes --journal
(rows appended as they finish, kept across reruns) and --out (written whole at the end), so a
rerun after any interruption recomputes nothing that had finished. ``--import-module`` imports extra
modules that register methods (out-of-tree adapters, test fakes) before the methods are created.
Exit status: 0 when the run finished (failed/unavailable methods are results), 2 on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

# Only the standard library and the sweep core (itself standard library only) above this line:
# TRITON_INTERPRET must be set before triton is imported.
from experiments.sweep import (RESULT_COLUMNS, TIMING_COLUMNS, WORKLOAD_COLUMNS, JournalLock,  # noqa: F401
                               ReferenceFailed, ResumableCSV, check_method, columns, configure_device_env, count,
                               create_methods, error_text, finish_method, free, publish_rows, repair_partial_line,
                               report, resolve_device, run_method, seed, stop_with_parent, time_methods)


def _device_arg(text: str) -> str:
    import re
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use cuda, cuda:N, cpu or auto")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/figure11.yaml")
    p.add_argument("--out", help="raw CSV of the shard; without --journal rows are appended to it as they finish "
                                 "(resumed if it exists)")
    p.add_argument("--journal", help="append rows here as they finish (resumed if it exists, never deleted) and "
                                     "write --out in one piece at the end: the workflow's way, so that a rerun "
                                     "never loses a finished row, whatever happened to --out")
    p.add_argument("--stop-with-parent", action="store_true",
                   help="exit when the parent process (the workflow) dies instead of running on as an orphan")
    p.add_argument("--shard", default="0/1", help="I/N: run shard I (0-based) of N; default 0/1")
    p.add_argument("--smoke", action="store_true", help="apply the YAML's smoke overrides (tiny shapes)")
    p.add_argument("--device", default="auto", type=_device_arg, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--max-rows", "--rows", dest="max_rows", type=int, help="run only the first K rows of the shard")
    p.add_argument("--methods", help="comma-separated method labels to run (default: all in the YAML)")
    p.add_argument("--gpu-memory-gb", type=float,
                   help="GPU memory in GB (1e9 B) for memory-filling decode batches (default: the device's)")
    p.add_argument("--sm-count", type=int,
                   help="SM count for SM-filling decode batches (default: the device's)")
    p.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                   help="import MODULE first so that the methods it registers can be used (repeatable)")
    p.add_argument("--list", action="store_true", help="print row, group and shard counts and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# ----------------------------------------------------------------------------- running

def raw_csv(path) -> ResumableCSV:
    """The raw CSV (or journal) of a run: one line per (row_key, method), resumed by a rerun."""
    return ResumableCSV(path, columns(), lines="one", pandas_values=True)


def write_header_only(path) -> None:
    """An empty shard is a valid result: a CSV with the header and no line."""
    publish_rows(None, path, set())


def run_experiment(experiment, out, shard=(0, 1), smoke: bool = False, device: str | None = "auto",
                   max_rows: int | None = None, methods=None, gpu_memory_bytes: float | None = None,
                   import_modules=(), progress: bool = True, sm_count: int | None = None,
                   journal: str | None = None) -> dict:
    """Run ``experiment`` (YAML path) into the CSV ``out``; returns counts per status written now.
    With ``journal`` rows go there as they finish and ``out`` is written whole at the end (an
    empty shard gives a header-only CSV). Raises ExperimentError on bad input."""
    if journal is None:
        counts = _run_rows(experiment, out, shard, smoke, device, max_rows, methods, gpu_memory_bytes,
                           import_modules, progress, sm_count)
        counts.pop("_keys")
        if not os.path.exists(out):
            write_header_only(out)
        return counts
    with JournalLock(journal):
        counts = _run_rows(experiment, journal, shard, smoke, device, max_rows, methods, gpu_memory_bytes,
                           import_modules, progress, sm_count)
        publish_rows(journal, out, counts.pop("_keys"))
    return counts


def _run_rows(experiment, out, shard, smoke, device, max_rows, methods, gpu_memory_bytes, import_modules,
              progress, sm_count) -> dict:
    device = resolve_device(device)
    configure_device_env(device)
    import importlib
    import json

    import torch
    from tqdm import tqdm

    from experiments import grid as G
    from experiments.provenance import provenance, stamp
    from kernels.reference import reference_outputs
    from kernels.workload import HybridBatch

    for mod in import_modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise G.ExperimentError(f"--import-module {mod}: {e}") from None
    if isinstance(shard, str):
        shard = G.parse_shard(shard)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise G.ExperimentError(f"--device {device}: no CUDA device here (use --device cpu)")
    exp = G.load_experiment(experiment, smoke=smoke)
    if dev.type == "cuda":
        # the device sizes the batches unless the experiment pins a size; an argument overrides both
        mem, sms = G.device_sizes(exp, dev)
        gpu_memory_bytes, sm_count = gpu_memory_bytes or mem, sm_count or sms
    rows = G.shard(G.expand(exp, gpu_memory_bytes, sm_count), *shard)
    if max_rows is not None:
        rows = rows[:max_rows]
    labels = G.select_methods(exp, methods)
    insts = create_methods(exp, labels, dev)
    csv_out = raw_csv(out)
    done = csv_out.done()
    prov = provenance(dev)
    timing = dict(exp.timing)
    # interleave: the methods of one batch are timed in turn (experiments/timing.py time_interleaved)
    interleave = bool(timing.pop("interleave", False))
    counts: dict = {}

    bar = tqdm(total=len(rows), file=sys.stderr, disable=not progress, unit="row", dynamic_ncols=True,
               desc=f"{exp.name} {shard[0]}/{shard[1]}")
    try:
        for gk, grows in G.groups(rows):
            if all((r.row_key, lab) in done for r in grows for lab in insts):
                bar.update(len(grows))
                continue
            base, alloc_error = None, None
            first = grows[0]
            try:
                base = HybridBatch.allocate(first.spec, device=dev, seed=seed(gk), prefill_kv_cap=first.prefill_kv_cap)
            except Exception as e:  # noqa: BLE001 - e.g. OOM for the largest decode batches
                alloc_error = f"allocating the batch failed: {error_text(e)}"
                free(dev)
            for row in grows:
                bar.set_postfix_str(row.row_key, refresh=False)
                todo = [lab for lab in insts if (row.row_key, lab) not in done]
                if not todo:
                    bar.update(1)
                    continue
                batch = None
                if base is not None:
                    batch = base if row.spec == base.spec else base.with_prefill(row.spec.prefill_len,
                                                                                row.spec.prefill_kv_len)
                ref_cache: dict = {}

                def get_ref(batch=batch, ref_cache=ref_cache):
                    if "err" in ref_cache:
                        raise ReferenceFailed(ref_cache["err"])
                    if "ref" not in ref_cache:
                        try:
                            ref_cache["ref"] = reference_outputs(batch)
                        except Exception as e:  # noqa: BLE001
                            ref_cache["err"] = error_text(e)
                            free(dev)
                            raise ReferenceFailed(ref_cache["err"]) from None
                    return ref_cache["ref"]

                results, checked, ran = {}, {}, []
                for lab in todo:
                    ms, inst, reason = insts[lab]
                    if reason is not None:
                        results[lab] = {"status": "unavailable", "reason": reason,
                                        "impl": inst.name if inst else ms.method}
                    elif alloc_error is not None:
                        results[lab] = {"status": "error", "reason": alloc_error, "impl": inst.name}
                    elif interleave:
                        # every method checked first, then all timed in turn (time_methods)
                        results[lab], fn = check_method(inst, batch, get_ref, dev)
                        ran.append(lab)
                        if fn is not None:
                            checked[lab] = (results[lab], fn)
                    else:
                        results[lab] = run_method(inst, batch, get_ref, dev, timing)
                if checked:
                    time_methods(checked, dev, timing, interleave=True)
                    checked.clear()
                for lab in ran:
                    finish_method(results[lab], insts[lab][1], dev)
                records = []
                for lab in todo:
                    ms, res = insts[lab][0], results[lab]
                    rec = {"experiment": exp.name, **row.fields(), "method": lab,
                           "options": json.dumps(ms.options, sort_keys=True), **res, **stamp(prov)}
                    records.append(rec)
                    count(counts, res["status"])
                csv_out.append(records)
                done.update((row.row_key, lab) for lab in todo)
                ref_cache.clear()
                bar.update(1)
            base = batch = None
    finally:
        bar.close()
    counts["_keys"] = {(r.row_key, lab) for r in rows for lab in insts}
    return counts


def list_experiment(experiment, shard_n: int = 1, smoke: bool = False, gpu_memory_bytes=None,
                    sm_count=None) -> str:
    """Row, group and shard counts, as printed by --list."""
    from experiments import grid as G

    exp = G.load_experiment(experiment, smoke=smoke)
    rows = G.expand(exp, gpu_memory_bytes, sm_count)
    lines = [f"{exp.name}{' (smoke)' if smoke else ''}: {len(rows)} rows in {len(G.groups(rows))} groups, "
             f"{len(exp.methods)} methods -> {len(rows) * len(exp.methods)} CSV lines"]
    for i in range(shard_n):
        part = G.shard(rows, i, shard_n)
        lines.append(f"  shard {i}/{shard_n}: {len(part)} rows, {len(G.groups(part))} groups")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    configure_device_env(device)
    from experiments import grid as G  # after configure_device_env (imports torch, never triton)

    gpu_mem = args.gpu_memory_gb * 1e9 if args.gpu_memory_gb else None

    def sweep() -> dict:
        shard = G.parse_shard(args.shard)
        if not args.out:
            raise G.ExperimentError("--out CSV is required (unless --list)")
        if args.stop_with_parent:
            stop_with_parent()
        return run_experiment(args.experiment, args.out, shard=shard, smoke=args.smoke, device=device,
                              max_rows=args.max_rows, methods=args.methods, gpu_memory_bytes=gpu_mem,
                              import_modules=args.import_module, progress=not args.no_progress,
                              sm_count=args.sm_count, journal=args.journal)

    if not args.list:
        return report(args.out, sweep)
    try:
        shard = G.parse_shard(args.shard)
        if gpu_mem is None and device.startswith("cuda"):
            import torch
            gpu_mem = G.device_sizes(G.load_experiment(args.experiment, smoke=args.smoke, check_methods=False),
                                     torch.device(device))[0]
        print(list_experiment(args.experiment, shard[1], args.smoke, gpu_mem, args.sm_count))
    except G.ExperimentError as e:  # bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
