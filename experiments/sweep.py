"""The sweep core: what every stage that runs methods over an experiment's rows shares
(experiments.run, experiments.profile, experiments.timeline, experiments.power).

  * the device environment (``configure_device_env`` before triton is imported, ``resolve_device``);
  * the row/column contract of the raw CSV (``WORKLOAD_COLUMNS``, ``RESULT_COLUMNS``, ``columns``);
  * method creation (``create_methods``), per-group seeding (``seed``), one checked-then-timed call
    of a method on a batch (``run_method``) and the one-line texts of failures;
  * one resumable CSV (``ResumableCSV``): lines are appended as they finish and flushed to disk, and
    a rerun reads back the (row_key, method) pairs already done after repairing what a kill left
    (a partial last line, a gzip stream without its end, an entry with only some of its lines,
    duplicate entries); plus the journal's lock and its atomic publication (``publish_rows``).

Only the standard library is imported at module level: TRITON_INTERPRET must be set (by
``configure_device_env``) before anything imports triton.
"""
from __future__ import annotations

import csv
import gzip
import os
import sys
import warnings
import zlib

# ----------------------------------------------------------------------------- device


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


# ----------------------------------------------------------------------------- the raw CSV's columns

WORKLOAD_COLUMNS = ["model", "q_heads", "kv_heads", "head_dim", "dtype", "prefill_len", "prefill_kv_len",
                    "chunk_idx", "decode_batch", "decode_ctx", "page_size", "group_key"]
TIMING_COLUMNS = ["median_ms", "min_ms", "max_ms", "iqr_ms", "repeats", "calls"]
RESULT_COLUMNS = ["status", "reason", "impl", "max_abs_err", "rel_err", *TIMING_COLUMNS, "timing", "options"]
KEY_COLUMNS = ("row_key", "method")


def columns() -> list:
    """Columns of experiments.run's raw CSV, in order."""
    from experiments.provenance import COLUMNS as PROV
    return ["experiment", "row_key", "method", *WORKLOAD_COLUMNS, *RESULT_COLUMNS, *PROV]


# ----------------------------------------------------------------------------- failures as text

def one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one physical line of at most ``limit`` characters. Each CSV record must be one
    line, or the partial-line repair could cut one in two."""
    text = " | ".join(s.strip() for s in str(text).splitlines() if s.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(e: BaseException) -> str:
    return one_line(f"{type(e).__name__}: {e}")


def is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free(device) -> None:
    """Return cached GPU memory (after an OOM, before the next batch)."""
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- methods and rows

def seed(group_key: str) -> int:
    """The random seed of a group's batch: every stage allocates the same tensors for a row."""
    import hashlib
    return int.from_bytes(hashlib.sha256(group_key.encode()).digest()[:4], "little")


class ReferenceFailed(Exception):
    """The reference attention of a batch failed (recorded as every method's error on that row)."""


def create_methods(exp, labels, device) -> dict:
    """{label: (MethodSpec, instance or None, unavailable reason or None)} of the experiment's
    methods (only ``labels`` unless None); unknown names are bad input (ExperimentError)."""
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
            out[ms.label] = (ms, None, one_line(str(e) or type(e).__name__))
            continue
        except Exception as e:  # noqa: BLE001
            raise ExperimentError(f"{exp.path}: methods: {ms.label}: options {ms.options}: {error_text(e)}") from None
        try:
            reason = inst.unavailable_reason(device)
        except Exception as e:  # noqa: BLE001
            reason = error_text(e)
        out[ms.label] = (ms, inst, one_line(reason) if reason else None)
    return out


def run_method(inst, batch, get_ref, device, timing) -> dict:
    """Result columns of one method on one batch: check first, time only if the check passed.
    ``get_ref()`` returns the reference outputs (or raises ReferenceFailed); ``timing`` are
    experiments.timing.time_callable's keywords."""
    res, fn = check_method(inst, batch, get_ref, device)
    if fn is not None:
        time_methods({"m": (res, fn)}, device, timing, interleave=False)
    return finish_method(res, inst, device)


def check_method(inst, batch, get_ref, device):
    """Prepare ``inst`` on ``batch`` and check one call's outputs against the reference. Returns
    (result columns, the prepared callable if the check passed else None)."""
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
            res.update(status="failed_check", reason=one_line(chk.reason))
            fn = None
    except MethodUnavailable as e:
        res.update(status="unavailable", reason=one_line(str(e) or type(e).__name__))
        fn = None
    except ReferenceFailed as e:
        res.update(status="error", reason=one_line(f"reference failed: {e}"))
        fn = None
    except Exception as e:  # noqa: BLE001 - every failure of a method is a result, not a crash
        res.update(status="error", reason=error_text(e))
        fn = out = None
        if is_oom(e):
            free(device)
    return res, fn


def time_methods(checked: dict, device, timing: dict, interleave: bool) -> None:
    """Time every checked callable of ``checked`` ({label: (result columns, callable)}) and fill
    its result columns (status ok and the times, or error). ``interleave``: all of them in turn
    (experiments.timing.time_interleaved); if that fails (e.g. out of memory with every method's
    buffers held at once) each is timed alone instead."""
    from experiments.timing import time_callable, time_interleaved, timing_mode

    def ok(res, t, interleaved=False):
        res.update(status="ok", median_ms=t.median_ms, min_ms=t.min_ms, max_ms=t.max_ms, iqr_ms=t.iqr_ms,
                   repeats=t.repeats, calls=t.calls, timing=timing_mode(device, interleaved=interleaved, **timing))
        if t.drained:
            res["reason"] = (f"queue_ahead: {t.drained} of {t.repeats} samples timed with the host behind "
                             f"the GPU (its launch time inside the span)")

    if interleave and len(checked) > 1:
        try:
            times = time_interleaved({lab: fn for lab, (_, fn) in checked.items()}, device, **timing)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                free(device)
        else:
            for lab, (res, _) in checked.items():
                ok(res, times[lab], interleaved=True)
            return
    for res, fn in checked.values():
        try:
            ok(res, time_callable(fn, device, **timing))
        except Exception as e:  # noqa: BLE001
            res.update(status="error", reason=error_text(e))
            if is_oom(e):
                free(device)


def finish_method(res: dict, inst, device) -> dict:
    """Fill ``impl`` (after the run: a plan chosen on the device says so) and leave the device
    usable after an error."""
    import torch

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


def count(counts: dict, status: str) -> None:
    """One more result of ``status`` in a stage's summary counts."""
    counts[status] = counts.get(status, 0) + 1


def summary_line(path, counts: dict) -> str:
    """'<path>: error 1, ok 5' (or 'nothing new'), as every stage prints at the end."""
    return f"{path}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing new")


def labels_arg(text: str | None) -> list | None:
    """Method labels of a ``--methods A,B`` option (None when not given)."""
    return [m.strip() for m in text.split(",")] if text else None


def report(out, run) -> int:
    """Run a stage's sweep (``run()`` returns counts per status written now) as every stage's
    command line does: bad input (ExperimentError) prints 'error: ...' and gives exit status 2;
    otherwise the summary line is printed and the status is 0."""
    from experiments.spec import ExperimentError

    try:
        counts = run()
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_line(out, counts), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- resumable CSV

def is_gzip(path) -> bool:
    """True for a path ending in .gz (or .gz.partial, the workflow's file before its rename)."""
    return str(path).removesuffix(".partial").endswith(".gz")


def open_csv(path, mode: str, gz: bool | None = None):
    """Open a CSV for text reading or writing ('r', 'w', 'a'), gzip-compressed when ``gz`` (by
    default: when the path says so, see ``is_gzip``)."""
    if is_gzip(path) if gz is None else gz:
        return gzip.open(path, mode + "t", newline="")
    return open(path, mode, newline="")


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


def _read_salvage(path) -> tuple[list, list, bool]:
    """(header, records, damaged) of ``path``: the records readable before any truncation (a gzip
    stream without its end, a line with too few or too many fields); damaged says whether anything
    was cut."""
    header, records, damaged = [], [], False
    try:
        with open_csv(path, "r") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                if None in rec.values() or None in rec:
                    damaged = True
                    break
                records.append(rec)
            header = list(reader.fieldnames or [])
    except (EOFError, OSError, zlib.error, csv.Error):
        damaged = True
    return header, records, damaged


def _key(rec) -> tuple:
    return rec["row_key"], rec["method"]


def _write_atomic(path, header: list, records: list, lineterminator: str = "\n") -> None:
    tmp = f"{path}.tmp"
    with open_csv(tmp, "w", gz=is_gzip(path)) as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", lineterminator=lineterminator)
        writer.writeheader()
        writer.writerows(records)
        f.flush()
        if not is_gzip(path):
            os.fsync(f.fileno())
    os.replace(tmp, path)


class ResumableCSV:
    """A CSV of results keyed by (row_key, method), appended to as they finish and resumed by a rerun.

    ``lines`` says how many lines one (row_key, method) entry has: "one" (a second line of a pair
    is a duplicate: the first is kept), "many" (an entry may have several lines, e.g. one per
    metric) or the name of a column holding the entry's line count on each of its lines (an entry
    with fewer lines was cut short by a kill: it is dropped and run again). A file with another
    header raises ExperimentError (``other_header="error"``) or is rewritten with ``header``
    (``"rewrite"``: lines keep the fields the new header has). Paths ending in .gz are gzip.

    ``pandas_values`` writes appended values as pandas does (NaN and None empty, a column's values
    in one dtype), as experiments.run's raw CSVs always were; else as the csv module does.
    ``lineterminator`` ends every line written (experiments.profile and .timeline keep the csv
    module's "\r\n")."""

    def __init__(self, path, header: list, lines: str = "one", other_header: str = "error",
                 pandas_values: bool = False, lineterminator: str = "\n"):
        self.path, self.header = str(path), list(header)
        self.lines, self.other_header = lines, other_header
        self.pandas_values, self.lineterminator = pandas_values, lineterminator

    def done(self) -> set:
        """(row_key, method) pairs complete in the file, after repairing it in place (atomically)."""
        path = self.path
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return set()
        if not is_gzip(path) and repair_partial_line(path):
            print(f"{path}: dropped a partial last line (interrupted write)", file=sys.stderr)
            if os.path.getsize(path) == 0:
                return set()
        old_header, records, damaged = _read_salvage(path)
        if old_header != self.header and self.other_header == "error":
            from experiments.spec import ExperimentError
            raise ExperimentError(f"{path}: existing CSV has other columns than this harness writes; "
                              f"use another --out or move the file away")
        kept = self._complete(records, damaged)
        if damaged or len(kept) != len(records) or old_header != self.header:
            _write_atomic(path, self.header, kept, self.lineterminator)
            self._report(len(records) - len(kept), damaged)
        return {_key(r) for r in kept}

    def _complete(self, records: list, damaged: bool) -> list:
        if self.lines == "one":
            seen, kept = set(), []
            for rec in records:
                if _key(rec) not in seen:
                    seen.add(_key(rec))
                    kept.append(rec)
            return kept
        if self.lines == "many":
            return records
        entries: dict = {}
        for rec in records:
            entries.setdefault(_key(rec), []).append(rec)
        kept = []
        for recs in entries.values():
            want = recs[0].get(self.lines) or ""
            if want == "" or len(recs) == int(want):
                kept.extend(recs)
        if damaged and records and not (records[-1].get(self.lines) or ""):
            # a file written before the count column: its last entry may be partial, nothing says so
            last = _key(records[-1])
            kept = [r for r in kept if _key(r) != last]
        return kept

    def _report(self, dropped: int, damaged: bool) -> None:
        if self.lines == "one":
            if dropped:
                print(f"{self.path}: dropping {dropped} duplicate (row_key, method) lines", file=sys.stderr)
        elif dropped or damaged:
            print(f"{self.path}: kept the lines of complete entries, dropped {dropped} of an entry cut short"
                  f"{' (file truncated)' if damaged else ''}", file=sys.stderr)

    def append(self, records: list) -> None:
        """Append records (the header first in a new file), flushed to disk before returning; a
        missing field is written empty."""
        if not records:
            return
        path = self.path
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open_csv(path, "a") as f:
            if self.pandas_values:
                import pandas as pd
                records = [{c: r.get(c, "") for c in self.header} for r in records]
                pd.DataFrame(records, columns=self.header).to_csv(f, header=new, index=False,
                                                                  lineterminator=self.lineterminator)
            else:
                writer = csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore", restval="",
                                        lineterminator=self.lineterminator)
                if new:
                    writer.writeheader()
                writer.writerows(records)
            f.flush()
            if not is_gzip(path):
                os.fsync(f.fileno())

    def write_header(self) -> None:
        """Create the file with its header if it is missing or empty (an empty result is valid)."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open_csv(self.path, "w") as f:
                csv.DictWriter(f, fieldnames=self.header, lineterminator=self.lineterminator).writeheader()


def publish_rows(journal, out, keys, header: list | None = None) -> int:
    """Write ``out`` atomically with the journal's lines whose (row_key, method) is in ``keys`` (the
    rows of this run, in journal order; lines of other rows, e.g. of an older YAML, stay behind).
    ``journal`` None writes a header-only CSV. Returns the number of lines written."""
    header = header or columns()
    records = []
    if journal is not None and os.path.exists(journal) and os.path.getsize(journal) > 0:
        _, records, _ = _read_salvage(journal)
        records = [r for r in records if _key(r) in keys]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    _write_atomic(out, header, records)
    return len(records)


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
