"""The runner end to end on CPU with test-only methods (tests/fake_methods.py)."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from experiments import run as R

import tests.fake_methods  # noqa: F401  registers TEST_* methods
from experiments.provenance import COLUMNS as PROV
from experiments.timing import time_callable

REPO = Path(__file__).resolve().parent.parent

TINY = """\
name: tiny
dtype: float16
models: [{name: m, q_heads: 6, kv_heads: 2, head_dim: 64, layers: 2}]
grid: {chunk_size: [16], context_len: [32], decode_batch: [2]}
methods:
  - TEST_correct
  - TEST_wrong
  - TEST_cuda_only
  - TEST_unavailable_shape
  - TEST_crash
  - {name: decode_only, method: TEST_decode_only, options: {a: 1}}
baseline: TEST_correct
filter: {min_part_fraction: 0}
timing: {warmup: 0, repeats: 2, calls: 1}
"""


def _write(tmp_path, text, folder=""):
    """Write an experiment YAML named after its ``name:`` field (the loader requires it), in
    ``tmp_path/folder`` so that variants of one experiment can sit side by side."""
    name = re.search(r"^name:\s*(\S+)\s*$", text, re.M).group(1)
    p = tmp_path / folder / f"{name}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


def _read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_statuses_and_columns(tmp_path):
    out = tmp_path / "raw.csv"
    counts = R.run_experiment(_write(tmp_path, TINY), out, device="cpu", progress=False)
    assert counts == {"ok": 4, "failed_check": 2, "unavailable": 4, "error": 2}
    df = _read(out)
    assert list(df.columns) == R.columns() and set(PROV) <= set(df.columns)
    assert len(df) == 2 * 6 and df.duplicated(["row_key", "method"]).sum() == 0
    by = {m: d for m, d in df.groupby("method")}
    timing = ["median_ms", "min_ms", "max_ms", "iqr_ms", "repeats", "calls"]
    ok = by["TEST_correct"]
    assert (ok.status == "ok").all() and (ok.impl == "torch-reference").all()
    assert (ok[timing] != "").all().all() and (ok.repeats == "2").all() and (ok.calls == "1").all()
    assert (ok.timing == "perf_counter").all()
    assert (ok.median_ms.astype(float) > 0).all() and (ok.rel_err.astype(float) < 5e-3).all()
    wrong = by["TEST_wrong"]
    assert (wrong.status == "failed_check").all() and (wrong[timing] == "").all().all()
    assert wrong.reason.str.contains("rel_err").all() and (wrong.rel_err.astype(float) > 0.05).all()
    assert (by["TEST_cuda_only"].status == "unavailable").all()
    assert by["TEST_cuda_only"].reason.str.contains("cuda only").all()
    assert (by["TEST_unavailable_shape"].reason == "no kernel for this shape").all()
    crash = by["TEST_crash"]
    assert (crash.status == "error").all() and (crash.reason == "RuntimeError: boom | second line").all()
    assert (by["decode_only"].status == "ok").all() and (by["decode_only"].options == '{"a": 1}').all()
    for col in ["experiment", "model", "gpu_name", "torch", "python", "hostname", "timestamp"]:
        assert (df[col] != "").all(), col
    assert set(df.row_key) == {"m|float16|p16@16|d2x32|ps16", "m|float16|p16@32|d2x32|ps16"}
    assert (df.group_key == "m|float16|p16|d2x32|ps16").all()

    # a second run finds everything done and writes nothing
    assert R.run_experiment(_write(tmp_path, TINY), out, device="cpu", progress=False) == {}
    assert len(_read(out)) == 12


def test_methods_filter_and_max_rows(tmp_path):
    out = tmp_path / "raw.csv"
    R.run_experiment(_write(tmp_path, TINY), out, device="cpu", methods="TEST_correct,decode_only", max_rows=1,
                     progress=False)
    df = _read(out)
    assert sorted(df.method) == ["TEST_correct", "decode_only"] and df.row_key.nunique() == 1
    with pytest.raises(ValueError, match="nope"):
        R.run_experiment(_write(tmp_path, TINY), out, device="cpu", methods="nope", progress=False)


def test_main_exit_codes(tmp_path, capsys):
    bad = _write(tmp_path, TINY.replace("repeats: 2", "repeats: two"), "bad")
    assert R.main([bad, "--out", str(tmp_path / "x.csv"), "--device", "cpu"]) == 2
    assert "tiny.yaml: timing.repeats: 'two' is not of type 'integer'" in capsys.readouterr().err
    unknown = _write(tmp_path, TINY.replace("TEST_crash", "NO_SUCH_METHOD"), "unknown")
    assert R.main([unknown, "--out", str(tmp_path / "x.csv"), "--device", "cpu", "--no-progress"]) == 2
    assert "unknown method 'NO_SUCH_METHOD'" in capsys.readouterr().err
    good = _write(tmp_path, TINY)
    assert R.main([good, "--out", str(tmp_path / "x.csv"), "--device", "cpu", "--shard", "2/2"]) == 2
    assert R.main([good, "--list", "--shard", "0/2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "tiny: 2 rows in 1 groups, 6 methods -> 12 CSV lines" in text and "shard 1/2: 0 rows, 0 groups" in text
    assert R.main(["experiments/figure11.yaml", "--list", "--gpu-memory-gb", "80", "--device", "cpu"]) == 0
    assert "4410 rows in 315 groups" in capsys.readouterr().out


def test_partial_line_and_duplicates_repaired(tmp_path):
    out = tmp_path / "raw.csv"
    exp = _write(tmp_path, TINY)
    R.run_experiment(exp, out, device="cpu", methods="TEST_correct,TEST_wrong", progress=False)
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 4
    # keep rows 1-2, duplicate row 1, then a line cut mid-write (no trailing newline)
    out.write_text("".join(lines[:3] + [lines[1], lines[3][:40]]))
    R.run_experiment(exp, out, device="cpu", methods="TEST_correct,TEST_wrong", progress=False)
    text = out.read_text()
    assert text.endswith("\n")
    df = _read(out)
    assert len(df) == 4 and not df.duplicated(["row_key", "method"]).any()


def test_repair_partial_line_helper(tmp_path):
    p = tmp_path / "f.csv"
    p.write_bytes(b"a,b\n1,2\n3,")
    assert R.repair_partial_line(p) and p.read_bytes() == b"a,b\n1,2\n"
    assert not R.repair_partial_line(p)
    p.write_bytes(b"a,")
    assert R.repair_partial_line(p) and p.read_bytes() == b""


def test_resume_after_sigkill(tmp_path):
    exp = _write(tmp_path, textwrap.dedent("""\
        name: killme
        models: [{name: m, q_heads: 4, kv_heads: 2, head_dim: 64, layers: 2}]
        grid: {chunk_size: [16], context_len: [64, 128], decode_batch: [1, 2]}
        methods:
          - {name: slow, method: TEST_correct, options: {sleep_s: 0.03}}
          - TEST_wrong
        baseline: slow
        filter: {min_part_fraction: 0}
        timing: {warmup: 0, repeats: 1, calls: 1}
    """))
    out = tmp_path / "raw.csv"
    cmd = [sys.executable, "-m", "experiments.run", exp, "--out", str(out), "--device", "cpu",
           "--import-module", "tests.fake_methods", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1 + 2 * 3:  # header + 3 rows of 2 methods
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    first = _read(out) if out.read_bytes().endswith(b"\n") else None
    n_rows = 2 * (4 + 8)
    assert first is None or len(first) < 2 * n_rows  # it was killed before finishing

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    df = _read(out)
    assert not df.duplicated(["row_key", "method"]).any()
    assert df.row_key.nunique() == n_rows and len(df) == 2 * n_rows
    assert set(df[df.method == "slow"].status) == {"ok"} and set(df[df.method == "TEST_wrong"].status) == {"failed_check"}


def test_interleaved_runs_give_the_same_rows(tmp_path):
    """timing: {interleave: true}: every method checked, then timed in turn; the same statuses,
    errors and checks as one method at a time, every ok row timed."""
    seq, inter = tmp_path / "seq.csv", tmp_path / "inter.csv"
    R.run_experiment(_write(tmp_path, TINY, "a"), seq, device="cpu", progress=False)
    counts = R.run_experiment(_write(tmp_path, TINY.replace("calls: 1}", "calls: 1, interleave: true}"), "b"), inter,
                              device="cpu", progress=False)
    assert counts == {"ok": 4, "failed_check": 2, "unavailable": 4, "error": 2}
    cols = ["row_key", "method", "status", "reason", "impl", "max_abs_err", "rel_err", "repeats", "calls"]
    a, b = (_read(p).sort_values(["row_key", "method"])[cols].reset_index(drop=True) for p in (seq, inter))
    pd.testing.assert_frame_equal(a, b)
    ok = _read(inter)
    ok = ok[ok.status == "ok"]
    assert (ok.median_ms.astype(float) > 0).all() and (ok.repeats == "2").all()
    assert (ok.timing == "perf_counter+interleaved").all()


def test_time_interleaved_alternates_and_falls_back(monkeypatch):
    from experiments import sweep, timing

    order = []
    t = timing.time_interleaved({n: (lambda n=n: order.append(n)) for n in "ABC"}, "cpu", warmup=1, repeats=3, calls=1)
    assert order == list("ABC") + list("ABC") + list("CBA") + list("ABC")       # warm-ups, then rounds
    assert set(t) == set("ABC") and all(len(x.samples_ms) == 3 for x in t.values())
    # interleaved timing that fails (e.g. out of memory with every buffer held): each alone instead
    real = timing.time_interleaved

    def fails_together(fns, *a, **k):
        if len(fns) > 1:
            raise MemoryError("out of memory with every method's buffers held")
        return real(fns, *a, **k)

    monkeypatch.setattr(timing, "time_interleaved", fails_together)
    res = {n: {"status": ""} for n in "AB"}
    sweep.time_methods({n: (res[n], lambda: None) for n in "AB"}, timing.torch.device("cpu"),
                       {"warmup": 0, "repeats": 2, "calls": 1}, interleave=True)
    assert all(r["status"] == "ok" and r["repeats"] == 2 for r in res.values())


def test_time_callable_cpu():
    calls = []
    t = time_callable(lambda: calls.append(1), "cpu", warmup=2, repeats=3, calls=4)
    assert len(calls) == 2 + 3 * 4 and t.repeats == 3 and t.calls == 4 and len(t.samples_ms) == 3
    assert t.min_ms <= t.median_ms <= t.max_ms and t.iqr_ms >= 0
    with pytest.raises(ValueError):
        time_callable(lambda: None, "cpu", cuda_graph=True)


def test_configure_device_env(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    R.configure_device_env("cuda")
    assert "TRITON_INTERPRET" not in os.environ
    if "triton" in sys.modules:  # imported by an adapter in an earlier test: too late, and it says so
        with pytest.warns(UserWarning, match="TRITON_INTERPRET"):
            R.configure_device_env("cpu")
    else:
        R.configure_device_env("cpu")
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_an_empty_shard_is_a_header_only_csv(tmp_path):
    """More shards than groups: the extra shards are valid, empty results (the workflow needs them)."""
    exp = _write(tmp_path, TINY)
    for kwargs in ({}, {"journal": str(tmp_path / "journal.csv")}):
        out = tmp_path / f"shard-{len(kwargs)}.csv"
        assert R.run_experiment(exp, str(out), shard=(1, 2), device="cpu", progress=False, **kwargs) == {}
        assert out.read_text().splitlines() == [",".join(R.columns())]
        assert len(_read(out)) == 0


SLOW = textwrap.dedent("""\
    name: slowrun
    models: [{name: m, q_heads: 4, kv_heads: 2, head_dim: 64, layers: 2}]
    grid: {chunk_size: [16], context_len: [64, 128], decode_batch: [1, 2]}
    methods:
      - {name: slow, method: TEST_correct, options: {sleep_s: 0.05}}
    baseline: slow
    filter: {min_part_fraction: 0}
    timing: {warmup: 0, repeats: 1, calls: 1}
""")


def _lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_journal_keeps_finished_rows_when_the_output_is_thrown_away(tmp_path):
    """The workflow's way: rows go to the journal, the shard CSV is written whole at the end. A rerun
    after the shard CSV was deleted (Snakemake does that to an incomplete job) recomputes nothing, and
    lines of rows the experiment no longer has stay out of the shard CSV."""
    exp, out, journal = _write(tmp_path, SLOW), tmp_path / "shard.csv", tmp_path / "journal" / "shard.csv"
    first = R.run_experiment(exp, str(out), device="cpu", progress=False, journal=str(journal))
    assert first == {"ok": 24} and len(_read(out)) == 24 and _read(journal).equals(_read(out))
    out.unlink()
    assert R.run_experiment(exp, str(out), device="cpu", progress=False, journal=str(journal)) == {}
    assert _read(out).equals(_read(journal))
    # a smaller grid: the journal keeps every line, the shard only this run's rows
    small = _write(tmp_path, SLOW.replace("context_len: [64, 128]", "context_len: [64]"), "small")
    assert R.run_experiment(small, str(out), device="cpu", progress=False, journal=str(journal)) == {}
    assert len(_read(out)) == 8 and len(_read(journal)) == 24


def test_stop_with_parent_leaves_no_orphan_and_the_rerun_resumes(tmp_path):
    """Killing the workflow (the runner's parent) stops the runner within a second, keeping its
    finished rows; the rerun computes only the rest, none twice."""
    exp, out, journal = _write(tmp_path, SLOW), tmp_path / "shard.csv", tmp_path / "journal.csv"
    cmd = [sys.executable, "-m", "experiments.run", exp, "--out", str(out), "--journal", str(journal),
           "--device", "cpu", "--no-progress", "--stop-with-parent", "--import-module", "tests.fake_methods"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a stand-in for Snakemake: a parent that starts the runner, prints its pid and waits
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait()",
         *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    runner = int(parent.stdout.readline())
    deadline = time.time() + 60
    while time.time() < deadline and _lines(journal) < 1 + 3:
        time.sleep(0.02)
    assert _lines(journal) >= 4, "the runner wrote no rows"
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(runner, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(runner, signal.SIGKILL)
        pytest.fail("the runner outlived its parent by 10 s")
    done = len(_read(journal))
    assert 3 <= done < 24 and not out.exists()
    counts = R.run_experiment(exp, str(out), device="cpu", progress=False, journal=str(journal))
    assert counts == {"ok": 24 - done}
    df = _read(out)
    assert len(df) == 24 and not df.duplicated(["row_key", "method"]).any()
