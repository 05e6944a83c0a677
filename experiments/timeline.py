"""CTA timeline of one fused launch per (hybrid batch, method) of an experiment.

    python -m experiments.timeline EXPERIMENT.yaml --out CSV [--journal CSV] [--methods A,B] [--smoke] [--no-progress]

The experiment's ``timeline:`` section names the method labels (our Triton family's one-launch
methods: POD, OURS_CTA and their option variants). Each (row, method) is launched ``warmup``
times, then once with tracing on: every CTA records its part (0 prefill, 1 decode), its logical
CTA id, its SM and its start and end on the GPU's global timer. An --out ending in .gz (or in
.gz.partial, the workflow's file before its rename) is written gzip-compressed (a launch has
thousands of CTAs; each line carries the provenance columns). The traced launch's outputs are
checked against the reference attention; a method that fails the check gets one line with status
``failed_check`` and no CTAs. Lines carry times in microseconds from the launch's first CTA start.
Re-running with the same --out resumes at the first (row, method) not yet written; a file cut
short by a kill (a gzip stream without its end, a launch with only some of its lines) keeps its
complete launches and traces the rest again. With --journal, launches are appended to the journal
as they finish (resumed the same way, never deleted) and --out is written whole at the end, as
experiments.run does: the workflow's way, so that a rerun traces no launch that had finished.
"""
from __future__ import annotations

import argparse
import sys

# launch_lines: how many lines the (row, method) launch wrote, on each of them, so that a resume can
# tell a launch cut short by a kill from a complete one
COLUMNS_HEAD = ["experiment", "row_key", "method", "status", "reason", "impl", "pid", "op", "cta", "sm",
                "start_us", "end_us", "launch_lines"]


def trace_rows(trace) -> list:
    """Per-CTA dicts of a (grid x 5) trace: times in us from the earliest CTA start."""
    t0 = int(trace[:, 3].min())
    return [{"pid": pid, "op": int(op), "cta": int(cta), "sm": int(sm),
             "start_us": (int(ts) - t0) / 1e3, "end_us": (int(te) - t0) / 1e3}
            for pid, (op, cta, sm, ts, te) in enumerate(trace.tolist())]


def timeline_experiment(experiment: str, out: str, methods=None, smoke: bool = False, device: str = "auto",
                        warmup: int = 2, progress: bool = True, journal: str | None = None) -> dict:
    """Trace every (row, method) the experiment's ``timeline:`` asks for into ``out``; returns
    counts per status written now. With ``journal`` launches go there as they finish and ``out``
    is written whole at the end."""
    import contextlib

    from experiments.sweep import JournalLock, configure_device_env, publish_rows, resolve_device
    device = resolve_device(device)
    configure_device_env(device)
    import torch

    from experiments import grid as G
    from experiments.provenance import COLUMNS as PROV
    from experiments.provenance import provenance
    from experiments.sweep import create_methods

    exp = G.load_experiment(experiment, smoke=smoke)
    spec = exp.raw.get("timeline")
    if not spec:
        raise G.ExperimentError(f"{experiment}: no timeline: section (methods) to trace")
    labels = list(spec["methods"])
    unknown = sorted(set(labels) - {m.label for m in exp.methods})
    if unknown:
        raise G.ExperimentError(f"{experiment}: timeline.methods: {', '.join(unknown)} are not method labels")
    if methods:
        labels = [lab for lab in labels if lab in set(methods)]
    dev = torch.device(device)
    rows = G.expand(exp, *(G.device_sizes(exp, dev) if dev.type == "cuda" else (None, None)))
    insts = create_methods(exp, labels, dev)
    for lab in labels:
        inst = insts[lab][1]
        if inst is not None and not hasattr(inst, "cta_timeline"):
            raise G.ExperimentError(f"{experiment}: timeline.methods: {lab} ({inst.name}) has no CTA trace; "
                                    "use one-launch methods of our Triton family (POD, OURS_CTA)")
    prov = provenance(dev)
    header = COLUMNS_HEAD + PROV
    with JournalLock(journal) if journal else contextlib.nullcontext():
        counts = _trace_rows(exp, rows, labels, insts, dev, prov, header, journal or out, warmup, progress)
        if journal:
            publish_rows(journal, out, {(r.row_key, lab) for r in rows for lab in labels}, header)
    return counts


def _trace_rows(exp, rows, labels, insts, dev, prov, header, path, warmup, progress) -> dict:
    """Trace the (row, method) launches not yet complete in ``path``, appending each as it finishes."""
    from tqdm import tqdm

    from experiments.provenance import stamp
    from experiments.sweep import ResumableCSV, count, error_text, one_line, seed
    from kernels.reference import check_outputs, reference_outputs
    from kernels.registry import MethodUnavailable
    from kernels.workload import HybridBatch

    # the row_key names the batch; a launch cut short by a kill has fewer lines than its launch_lines
    sink = ResumableCSV(path, header, lines="launch_lines", other_header="rewrite", lineterminator="\r\n")
    done = sink.done()
    sink.write_header()
    counts: dict = {}
    todo = [(r, lab) for r in rows for lab in labels if (r.row_key, lab) not in done]
    for row, lab in tqdm(todo, file=sys.stderr, disable=not progress, unit="launch", desc=f"timeline {exp.name}"):
        base = {"experiment": exp.name, **row.fields(), "method": lab, **stamp(prov)}
        _, inst, reason = insts[lab]
        lines = []
        status, impl = "ok", inst.name if inst is not None else lab
        if reason is not None:
            status = "unavailable"
        else:
            try:
                batch = HybridBatch.allocate(row.spec, device=dev, seed=seed(row.group_key),
                                             prefill_kv_cap=row.prefill_kv_cap)
                inst.require_parts(batch)
                ref = reference_outputs(batch)
                _, trace, outs = inst.cta_timeline(batch, warmup)
                impl = str(inst.info().get("impl", inst.name))
                chk = check_outputs(outs, ref, row.spec.dtype, inst.checked_parts(batch))
                if chk.ok:
                    lines = [{**base, **line, "status": "ok", "reason": "", "impl": impl}
                             for line in trace_rows(trace)]
                else:
                    status, reason = "failed_check", one_line(chk.reason)
            except MethodUnavailable as e:
                status, reason = "unavailable", one_line(str(e))
            except Exception as e:  # noqa: BLE001 - a failure is a result, not a crash
                status, reason = "error", error_text(e)
            finally:
                batch = ref = outs = None
        if not lines:
            lines = [{**base, "status": status, "reason": reason, "impl": impl}]
        for line in lines:
            line["launch_lines"] = len(lines)
        sink.append(lines)
        count(counts, status)
    return counts


def main(argv=None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.timeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--out", required=True, help="CSV of the traces; without --journal launches are appended to "
                                                 "it as they finish (resumed if it exists)")
    ap.add_argument("--journal", help="append launches here as they finish (resumed if it exists, never deleted) "
                                      "and write --out in one piece at the end")
    ap.add_argument("--stop-with-parent", action="store_true",
                    help="exit when the parent process (the workflow) dies instead of running on as an orphan")
    ap.add_argument("--methods", help="comma-separated labels (default: the timeline: section's)")
    ap.add_argument("--smoke", action="store_true", help="apply the YAML's smoke overrides (tiny shapes)")
    ap.add_argument("--device", default="auto", help="cuda, cpu (Triton interpreter) or auto")
    ap.add_argument("--warmup", type=int, default=2, help="untraced launches before the traced one")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from experiments.sweep import labels_arg, report, stop_with_parent

    if args.stop_with_parent:
        stop_with_parent()
    return report(args.out, lambda: timeline_experiment(args.experiment, args.out, labels_arg(args.methods), args.smoke,
                                                        args.device, args.warmup, not args.no_progress,
                                                        journal=args.journal))


if __name__ == "__main__":
    sys.exit(main())
