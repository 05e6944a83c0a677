"""Every line of a raw CSV is checked before analysis uses any of it (docs/ARCHITECTURE.md, "Raw CSV").

    frame = load_checked(paths, RAW, experiment="figure11")

A bad line is a ``RawDataError`` whose message names the file and the 1-based line (as a text
editor counts them: the header is line 1) and what is wrong with it, so that nothing is computed,
let alone written, from it. The one exception is a truncated last line (the file does not end in a
newline and its last line has fewer fields than the header, or cannot be parsed), what a run
killed while appending leaves: it is dropped with a ``RawDataWarning`` naming file and line.

The checks, per format (``CsvFormat``): the required columns are in the header; every line has as
many fields as the header; the status is a known one; on lines with the ok status the timing columns
are finite numbers > 0 (>= 0 where the format allows 0, e.g. CPU traces); whole-number columns hold
whole numbers >= 0; key columns are not empty; every line carries the experiment being analysed
(without one given: the same experiment as the first line); and a key (e.g. (row_key, method))
appears at most once over all files.
"""
from __future__ import annotations

import csv
import gzip
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Status of a (row, method) line (experiments.run and experiments.timeline).
STATUSES = ("ok", "failed_check", "unavailable", "error")

# Columns of experiments.run's raw CSV that analysis.aggregate needs on every line: the key, the
# experiment, the result, and the workload and GPU columns that build_table turns into FLOPs,
# bytes and physical limits (chunk_idx, group_key, the timing spread and the rest of the provenance
# are carried along where present, but not needed).
REQUIRED_RAW_COLUMNS = ("row_key", "method", "experiment", "status", "median_ms", "model", "q_heads",
                        "kv_heads", "head_dim", "dtype", "prefill_len", "prefill_kv_len", "decode_batch",
                        "decode_ctx", "page_size", "gpu_name")

MAX_LISTED = 10  # problems spelled out in one error message


class RawDataError(ValueError):
    """Raw data that analysis must not use; the message names the file and line of each problem."""


class RawDataWarning(UserWarning):
    """A truncated last line of a raw CSV was dropped."""


@dataclass(frozen=True)
class CsvFormat:
    """What a valid line of one kind of raw CSV looks like."""

    name: str                              # in messages, e.g. "raw CSV"
    required: tuple[str, ...]              # columns the header must have
    status: str                            # the status column
    statuses: tuple[str, ...]              # its known values, as written
    ok: tuple[str, ...]                    # values of lines that carry timings
    times: tuple[str, ...]                 # on ok lines: finite numbers > 0 (>= 0 with allow_zero)
    optional_times: tuple[str, ...] = ()   # the same, where the column is present
    allow_zero: bool = False
    ok_numbers: tuple[str, ...] = ()       # on ok lines: not empty (and whole numbers, see integers)
    integers: tuple[str, ...] = ()         # where present and not empty: whole numbers >= 0
    not_empty: tuple[str, ...] = ()        # never empty
    key: tuple[str, ...] = ()              # unique over all files (empty: no check)


RAW = CsvFormat(
    name="raw CSV", required=REQUIRED_RAW_COLUMNS, status="status", statuses=STATUSES, ok=("ok",),
    times=("median_ms",), optional_times=("min_ms", "max_ms"),
    integers=("q_heads", "kv_heads", "head_dim", "prefill_len", "prefill_kv_len", "chunk_idx",
              "decode_batch", "decode_ctx", "page_size", "sm_count"),
    not_empty=("row_key", "method"), key=("row_key", "method"))

# experiments.timeline: one line per CTA of a traced launch; CPU (interpreter) traces have all times 0.
CTAS = CsvFormat(
    name="CTA timeline CSV", required=("experiment", "row_key", "method", "status", "op", "start_us", "end_us"),
    status="status", statuses=STATUSES, ok=("ok",), times=("start_us", "end_us"), allow_zero=True,
    ok_numbers=("op",), integers=("pid", "op", "cta", "sm", "sm_count"), not_empty=("row_key", "method"))

# experiments.microbench_run (figure 7): one line per (compute_iters, variant); verified 1 or 0.
MICROBENCH = CsvFormat(
    name="micro-benchmark CSV",
    required=("experiment", "compute_iters", "variant", "time_ms_median", "verified", "gpu_name", "sm_count"),
    status="verified", statuses=("1", "0", "1.0", "0.0"), ok=("1", "1.0"), times=("time_ms_median",),
    optional_times=("time_ms_min", "time_ms_max"), integers=("compute_iters", "sm_count"),
    not_empty=("variant",), key=("compute_iters", "variant"))


@dataclass
class CheckedCsv:
    """One checked file: its frame (as pandas reads it) and the 1-based line of each row."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray


def _read_text(path: Path) -> tuple[str, list[str]]:
    """The file's text (gzip by its magic bytes), and problems of a truncated last line dropped."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError) as e:
            raise RawDataError(f"{path}: not a complete gzip file ({e}): was its run interrupted?") from None
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        last_start = data.rfind(b"\n") + 1
        if not data.endswith(b"\n") and e.start >= last_start:  # a multi-byte character cut at the end
            return data[:last_start].decode("utf-8-sig"), [f"{path}:{line}: dropped the truncated last line "
                                                            f"(no newline at the end of the file; not UTF-8)"]
        raise RawDataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def _records(text: str):
    """(first line, fields or None, parse error or None, offset) per CSV record, blank lines skipped."""
    offsets = []

    def physical_lines():
        offset = 0
        for line in io.StringIO(text, newline=""):
            offsets.append(offset)
            offset += len(line)
            yield line

    reader = csv.reader(physical_lines(), strict=True)
    done = 0  # physical lines consumed by the records so far
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield done + 1, None, str(e), offsets[done]
            return  # the reader cannot resynchronise after a broken quote
        if fields:
            yield done + 1, fields, None, offsets[done]
        done = reader.line_num


def _snippet(text: str, offset: int) -> str:
    line = text[offset:].split("\n", 1)[0]
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.str.strip(), errors="coerce")


def check_csv(path, fmt: CsvFormat, experiment: str | None = None,
              source: str = "the experiment analysed is") -> tuple[CheckedCsv, list[str]]:
    """Check one file line by line. Returns the checked file and the problems found (each
    ``"<path>:<line>: <what>"``); the truncated last line, if any, is already dropped (warned).
    Every line must carry ``experiment`` (``source`` introduces that name in messages);
    without it, the experiment of the file's first line."""
    path = Path(path)
    text, dropped = _read_text(path)
    for message in dropped:
        warnings.warn(message, RawDataWarning, stacklevel=3)
    unterminated = bool(text) and not text.endswith(("\n", "\r"))
    records = list(_records(text))
    if not records or records[0][1] is None:
        raise RawDataError(f"{path}:1: no header line" + (f" ({records[0][2]})" if records else " (empty file)"))
    header = records[0][1]
    problems = []
    missing = [c for c in fmt.required if c not in header]
    if missing:
        problems.append(f"{path}:1: no column {', '.join(missing)} in the header (the {fmt.name} needs "
                        f"{', '.join(fmt.required)}; docs/ARCHITECTURE.md)")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        problems.append(f"{path}:1: column {', '.join(twice)} appears more than once in the header")
    if problems:
        raise RawDataError("\n".join(problems))

    keep, lines, cut = [], [], len(text)
    for i, (line, fields, error, offset) in enumerate(records[1:], start=1):
        bad = None
        if error is not None:
            bad = f"cannot be parsed ({error})"
        elif len(fields) < len(header):
            bad = (f"{len(fields)} field{'s' * (len(fields) != 1)} where the header has {len(header)} "
                   f"(a partial or garbage line: {_snippet(text, offset)})")
        elif len(fields) > len(header):
            bad = f"{len(fields)} fields where the header has {len(header)} ({_snippet(text, offset)})"
        if bad is None:
            keep.append(fields)
            lines.append(line)
        elif i == len(records) - 1 and unterminated and (error is not None or len(fields) < len(header)):
            warnings.warn(f"{path}:{line}: dropped the truncated last line (no newline at the end of the "
                          f"file; {bad})", RawDataWarning, stacklevel=2)
            cut = offset
        else:
            problems.append((line, f"{path}:{line}: {bad}"))

    cells = pd.DataFrame(keep, columns=header, dtype=object).fillna("")
    lines = np.asarray(lines, dtype=int)
    problems += _check_values(cells, lines, path, fmt, (experiment, source))
    frame = pd.read_csv(io.StringIO(text[:cut])) if not problems else pd.DataFrame()
    if not problems and len(frame) != len(lines):  # a CSV dialect pandas reads otherwise than csv
        problems.append((1, f"{path}: pandas reads {len(frame)} lines, the line check {len(lines)}"))
    return CheckedCsv(path, frame, lines), [p for _, p in sorted(problems, key=lambda p: p[0])]


def _check_values(cells: pd.DataFrame, lines: np.ndarray, path: Path, fmt: CsvFormat,
                  experiment: tuple[str | None, str]) -> list[tuple[int, str]]:
    """(line, message) per bad value; ``cells`` holds the literal text of every field;
    ``experiment`` is (expected experiment or None for the first line's, where it comes from)."""
    problems = []

    def flag(mask, column, what):
        for line, value in zip(lines[mask.to_numpy()], cells.loc[mask, column]):
            problems.append((int(line), f"{path}:{line}: {what(value)}"))

    for column in fmt.not_empty:
        flag(cells[column].str.strip().eq(""), column, lambda v, c=column: f"empty {c}")
    status = cells[fmt.status].str.strip()
    known = ", ".join(dict.fromkeys(s.split(".")[0] for s in fmt.statuses))
    flag(~status.isin(fmt.statuses), fmt.status,
         lambda v: f"{fmt.status} {v!r} is not one of {known}")
    if "experiment" in cells and len(cells):
        expected, whose = experiment
        if expected is None:
            expected, whose = cells["experiment"].iloc[0], f"line {lines[0]} has"
        other = cells["experiment"].ne(expected)
        if len(cells) > 1 and other.all() and cells["experiment"].nunique() == 1:  # a whole file: say it once
            problems.append((int(lines[0]), f"{path}:{lines[0]}: every line ({len(cells)}) has experiment "
                                            f"{cells['experiment'].iloc[0]!r}, but {whose} {expected!r} "
                                            f"(another experiment's file?)"))
        else:
            flag(other, "experiment",
                 lambda v: f"experiment {v!r}, but {whose} {expected!r} (a line of another experiment?)")
    ok = status.isin(fmt.ok)
    bound = ">= 0" if fmt.allow_zero else "> 0"
    for column in fmt.times + tuple(c for c in fmt.optional_times if c in cells):
        value = _numbers(cells[column])
        good = np.isfinite(value) & (value.ge(0) if fmt.allow_zero else value.gt(0))
        flag(ok & ~good, column,
             lambda v, c=column: f"{c} {v!r} on a line with {fmt.status} {fmt.ok[0]}: expected a finite "
                                 f"number {bound}")
    for column in fmt.ok_numbers:
        flag(ok & cells[column].str.strip().eq(""), column,
             lambda v, c=column: f"empty {c} on a line with {fmt.status} {fmt.ok[0]}")
    for column in (c for c in fmt.integers if c in cells):
        text = cells[column].str.strip()
        value = _numbers(cells[column])
        whole = np.isfinite(value) & value.ge(0) & value.mod(1).eq(0)
        flag(text.ne("") & ~whole, column, lambda v, c=column: f"{c} {v!r} is not a whole number >= 0")
    return problems


def _raise(problems: list[str], what: str) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise RawDataError(problems[0])
    listed = problems[:MAX_LISTED]
    more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise RawDataError(f"{len(problems)} problems in the {what}:\n" + "\n".join(listed) + more)


def load_checked(paths, fmt: CsvFormat, experiment: str | None = None) -> pd.DataFrame:
    """Check every file (see the module docstring), then concatenate them as ``pd.read_csv`` reads
    them. Raises ``RawDataError`` listing the bad lines (file:line: what) before returning anything.
    Without ``experiment``, every line must carry the experiment of the first file's first line."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError(f"no {fmt.name} given")
    checked, problems, source = [], [], "the experiment analysed is"
    for path in paths:
        one, found = check_csv(path, fmt, experiment, source)
        checked.append(one)
        problems += found
        if experiment is None and "experiment" in one.frame and len(one.frame):
            # later files must match the first
            experiment, source = str(one.frame["experiment"].iloc[0]), f"{path}:{one.lines[0]} has"
    _raise(problems, f"{fmt.name}s")
    frame = pd.concat([c.frame for c in checked], ignore_index=True)
    if fmt.key:
        files = np.concatenate([np.full(len(c.frame), i) for i, c in enumerate(checked)])
        lines = np.concatenate([c.lines for c in checked])
        _check_unique(frame, files, lines, paths, fmt)
    return frame


def _check_unique(frame: pd.DataFrame, files: np.ndarray, lines: np.ndarray, paths: list[Path],
                  fmt: CsvFormat) -> None:
    """A key (e.g. (row_key, method)) appears once over all files; the error names both places."""
    key = list(fmt.key)
    dup = frame.duplicated(key, keep=False).to_numpy()
    if not dup.any():
        return
    where = frame.loc[dup, key].assign(_file=files[dup], _line=lines[dup])
    examples = []
    for values, group in where.groupby(key, sort=False):
        places = [f"{paths[f]}:{line}" for f, line in zip(group["_file"], group["_line"])]
        examples.append(f"{tuple(values)} at {' and '.join(places)}")
    listed = "\n".join(examples[:MAX_LISTED])
    more = f"\n... and {len(examples) - MAX_LISTED} more" if len(examples) > MAX_LISTED else ""
    both = sorted({str(paths[f]) for f in where["_file"]})
    raise RawDataError(f"{len(examples)} duplicate ({', '.join(key)}) in the {fmt.name}s ({', '.join(both)}); "
                       f"are two sweeps of different shard counts mixed in one folder?\n{listed}{more}")
