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
import warnings

# Only the standard library above this line: TRITON_INTERPRET must be set before triton is imported.


def configure_device_env(device: str) -> None:
    """Prepare the environment for ``device`` ('cpu' runs Triton kernels in the interpreter).
    Call before anything imports triton; warns if that already happened."""
    if device == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            warnings.warn("triton was imported before TRITON_INTERPRET=1 was set; Triton kernels may not run on CPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")


def resolve_device(device: str | None) -> str:
    """'cpu', 'cuda' or 'cuda:N'; None/'auto' picks cuda when available (importing torch does not
    import triton, so this is safe before configure_device_env)."""
    if device in (None, "", "auto"):
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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


# ----------------------------------------------------------------------------- CSV

WORKLOAD_COLUMNS = ["model", "q_heads", "kv_heads", "head_dim", "dtype", "prefill_len", "prefill_kv_len",
                    "chunk_idx", "decode_batch", "decode_ctx", "page_size", "group_key"]
TIMING_COLUMNS = ["median_ms", "min_ms", "max_ms", "iqr_ms", "repeats", "calls"]
RESULT_COLUMNS = ["status", "reason", "impl", "max_abs_err", "rel_err", *TIMING_COLUMNS, "options"]


def columns() -> list:
    from experiments.provenance import COLUMNS as PROV
    return ["experiment", "row_key", "method", *WORKLOAD_COLUMNS, *RESULT_COLUMNS, *PROV]


def repair_partial_line(path) -> bool:
    """Truncate a trailing line without newline (left by a kill mid-write). True if it did."""
    size = os.path.getsize(path)
    if size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_done(path) -> set:
    """(row_key, method) pairs already in the CSV at ``path`` (repairing a partial last line and
    dropping duplicate pairs, keeping the first)."""
    import pandas as pd
    from experiments.grid import ExperimentError

    if not os.path.exists(path):
        return set()
    if repair_partial_line(path):
        print(f"{path}: dropped a partial last line (interrupted write)", file=sys.stderr)
    if os.path.getsize(path) == 0:
        return set()
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns) != columns():
        raise ExperimentError(f"{path}: existing CSV has other columns than this harness writes; "
                              f"use another --out or move the file away")
    dup = df.duplicated(["row_key", "method"], keep="first")
    if dup.any():
        print(f"{path}: dropping {int(dup.sum())} duplicate (row_key, method) lines", file=sys.stderr)
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as f:
            df[~dup].to_csv(f, index=False, lineterminator="\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        df = df[~dup]
    return set(zip(df["row_key"], df["method"]))


def append_rows(path, records: list) -> None:
    """Append records (header only for a new file), flushed to disk before returning."""
    import pandas as pd

    if not records:
        return
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    cols = columns()
    # Missing values as "" (not NaN) so integer columns stay integers in the CSV.
    records = [{c: r.get(c, "") for c in cols} for r in records]
    with open(path, "a", newline="") as f:
        pd.DataFrame(records, columns=cols).to_csv(f, header=new, index=False, lineterminator="\n")
        f.flush()
        os.fsync(f.fileno())


def write_header_only(path) -> None:
    """An empty shard is a valid result: a CSV with the header and no line."""
    publish_rows(None, path, set())


def publish_rows(journal, out, keys) -> int:
    """Write ``out`` atomically with the journal's lines whose (row_key, method) is in ``keys`` (the
    rows of this run, in journal order; lines of other rows, e.g. of an older YAML, stay behind).
    Returns the number of lines written."""
    import pandas as pd

    cols = columns()
    frame = pd.DataFrame(columns=cols)
    if journal is not None and os.path.exists(journal) and os.path.getsize(journal) > 0:
        frame = pd.read_csv(journal, dtype=str, keep_default_na=False)
        frame = frame[[k in keys for k in zip(frame["row_key"], frame["method"])]]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "w", newline="") as f:
        frame.to_csv(f, index=False, lineterminator="\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return len(frame)


class JournalLock:
    """Exclusive lock on a journal (``<journal>.lock``) so two runners never append to it at once,
    e.g. a rerun while an earlier runner still finishes; the second waits for the first."""

    def __init__(self, journal):
        self.path = f"{journal}.lock"

    def __enter__(self):
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.f = open(self.path, "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{self.path}: another runner holds this journal; waiting for it to finish", file=sys.stderr)
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


def stop_with_parent(poll_s: float = 0.5) -> None:
    """Exit this process soon after its parent dies (a killed workflow must not leave a runner behind
    as an orphan). Rows already appended stay in the journal; a partial last line is repaired on resume."""
    import threading

    parent = os.getppid()

    def watch():
        import time
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"parent process {parent} is gone: stopping (finished rows are kept for the rerun)",
                      file=sys.stderr, flush=True)
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="stop-with-parent").start()


def _one_line(text: str, limit: int = 2000) -> str:
    # Each CSV record must be one physical line, or the partial-line repair could cut one in two.
    text = " | ".join(s.strip() for s in str(text).splitlines() if s.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- running

def _seed(group_key: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.sha256(group_key.encode()).digest()[:4], "little")


def _is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error_text(e: BaseException) -> str:
    return _one_line(f"{type(e).__name__}: {e}")


class _ReferenceError(Exception):
    pass


def _run_method(inst, batch, get_ref, device, timing) -> dict:
    """Result columns of one method on one batch: check first, time only if the check passed."""
    import torch
    from experiments.timing import time_callable
    from kernels.reference import check_outputs
    from kernels.registry import MethodUnavailable

    res = {"status": "", "reason": "", "impl": "", "max_abs_err": "", "rel_err": ""}
    fn = out = None
    try:
        ref = get_ref()
        fn = inst.prepare(batch)
        out = fn()
        chk = check_outputs(out, ref, batch.spec.dtype, inst.checked_parts(batch))
        out = None
        res.update(max_abs_err=chk.max_abs_err, rel_err=chk.rel_err)
        if not chk.ok:
            res.update(status="failed_check", reason=_one_line(chk.reason))
        else:
            t = time_callable(fn, device, **timing)
            res.update(status="ok", median_ms=t.median_ms, min_ms=t.min_ms, max_ms=t.max_ms, iqr_ms=t.iqr_ms,
                       repeats=t.repeats, calls=t.calls)
    except MethodUnavailable as e:
        res.update(status="unavailable", reason=_one_line(str(e) or type(e).__name__))
    except _ReferenceError as e:
        res.update(status="error", reason=_one_line(f"reference failed: {e}"))
    except Exception as e:  # noqa: BLE001 - every failure of a method is a result, not a crash
        res.update(status="error", reason=_error_text(e))
        if _is_oom(e):
            fn = out = None
            _free(device)
    finally:
        fn = out = None
    try:
        res["impl"] = str(inst.info().get("impl", inst.name))
    except Exception:  # noqa: BLE001
        res["impl"] = inst.name
    if device.type == "cuda" and res["status"] == "error":
        try:
            torch.cuda.synchronize(device)
        except Exception:  # noqa: BLE001 - a sticky CUDA error; later rows will record it too
            pass
    return res


def _create_methods(exp, labels, device):
    """{label: (MethodSpec, instance or None, unavailable reason or None)}; unknown names are bad input."""
    from experiments.grid import ExperimentError
    from kernels.registry import MethodUnavailable, create

    out = {}
    for ms in exp.methods:
        if labels is not None and ms.label not in labels:
            continue
        try:
            inst = create(ms.method, **ms.options)
        except KeyError as e:
            raise ExperimentError(f"{exp.path}: methods: {e.args[0] if e.args else e}") from None
        except (MethodUnavailable, ImportError) as e:
            out[ms.label] = (ms, None, _one_line(str(e) or type(e).__name__))
            continue
        except Exception as e:  # noqa: BLE001
            raise ExperimentError(f"{exp.path}: methods: {ms.label}: options {ms.options}: {_error_text(e)}") from None
        try:
            reason = inst.unavailable_reason(device)
        except Exception as e:  # noqa: BLE001
            reason = _error_text(e)
        out[ms.label] = (ms, inst, _one_line(reason) if reason else None)
    return out


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
    if gpu_memory_bytes is None and dev.type == "cuda":
        gpu_memory_bytes = float(torch.cuda.get_device_properties(dev).total_memory)
    if sm_count is None and dev.type == "cuda":
        sm_count = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = G.shard(G.expand(exp, gpu_memory_bytes, sm_count), *shard)
    if max_rows is not None:
        rows = rows[:max_rows]
    labels = None
    if methods:
        labels = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
        unknown = sorted(set(labels) - {m.label for m in exp.methods})
        if unknown:
            raise G.ExperimentError(f"--methods: {', '.join(unknown)} not in {exp.path} "
                                    f"(has {', '.join(m.label for m in exp.methods)})")
    insts = _create_methods(exp, labels, dev)
    done = read_done(out)
    prov = provenance(dev)
    timing = dict(exp.timing)
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
                base = HybridBatch.allocate(first.spec, device=dev, seed=_seed(gk), prefill_kv_cap=first.prefill_kv_cap)
            except Exception as e:  # noqa: BLE001 - e.g. OOM for the largest decode batches
                alloc_error = f"allocating the batch failed: {_error_text(e)}"
                _free(dev)
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
                        raise _ReferenceError(ref_cache["err"])
                    if "ref" not in ref_cache:
                        try:
                            ref_cache["ref"] = reference_outputs(batch)
                        except Exception as e:  # noqa: BLE001
                            ref_cache["err"] = _error_text(e)
                            _free(dev)
                            raise _ReferenceError(ref_cache["err"]) from None
                    return ref_cache["ref"]

                records = []
                for lab in todo:
                    ms, inst, reason = insts[lab]
                    if reason is not None:
                        res = {"status": "unavailable", "reason": reason, "impl": inst.name if inst else ms.method}
                    elif alloc_error is not None:
                        res = {"status": "error", "reason": alloc_error, "impl": inst.name}
                    else:
                        res = _run_method(inst, batch, get_ref, dev, timing)
                    rec = {"experiment": exp.name, **row.fields(), "method": lab,
                           "options": json.dumps(ms.options, sort_keys=True), **res, **stamp(prov)}
                    records.append(rec)
                    counts[res["status"]] = counts.get(res["status"], 0) + 1
                append_rows(out, records)
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

    try:

        gpu_mem = args.gpu_memory_gb * 1e9 if args.gpu_memory_gb else None
        shard = G.parse_shard(args.shard)
        if args.list:
            if gpu_mem is None and device.startswith("cuda"):
                import torch
                gpu_mem = float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
            print(list_experiment(args.experiment, shard[1], args.smoke, gpu_mem, args.sm_count))
            return 0
        if not args.out:
            raise G.ExperimentError("--out CSV is required (unless --list)")
        if args.stop_with_parent:
            stop_with_parent()
        counts = run_experiment(args.experiment, args.out, shard=shard, smoke=args.smoke, device=device,
                                max_rows=args.max_rows, methods=args.methods, gpu_memory_bytes=gpu_mem,
                                import_modules=args.import_module, progress=not args.no_progress,
                                sm_count=args.sm_count, journal=args.journal)
    except G.ExperimentError as e:  # bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing new"
    print(f"{args.out}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
