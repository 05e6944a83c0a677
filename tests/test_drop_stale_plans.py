"""scripts/drop_stale_plans.py removes exactly the lines whose recorded plan is stale (and their
paired lines), and the shipped figure-11 lines of our one-launch methods record the plan the
current code makes (else the figure would mix plans)."""
import csv
import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "results" / "raw" / "figure11"
# the shipped files that hold POD and OURS_Serial lines of one batch side by side
SHIPPED = [RAW / f"same-machine-shard-{i}-of-8.csv" for i in range(8)]


def _script():
    spec = importlib.util.spec_from_file_location("drop_stale_plans", ROOT / "scripts" / "drop_stale_plans.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lines(path, method):
    """The header and the lines of ``method`` in ``path``, as written."""
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    i_method = next(csv.reader([lines[0]])).index("method")
    return [lines[0]] + [ln for ln in lines[1:] if next(csv.reader([ln]))[i_method] == method]


def test_drops_stale_lines_and_their_pairs(tmp_path):
    shipped = SHIPPED[0]
    pod, serial = _lines(shipped, "POD"), _lines(shipped, "OURS_Serial")
    keys = [next(csv.reader([ln]))[1] for ln in pod[1:4]]
    pod_file, serial_file = tmp_path / "extra-POD.csv", tmp_path / "extra-OURS_Serial.csv"
    impl = next(csv.reader([pod[2]]))[next(csv.reader([pod[0]])).index("impl")]
    stale = pod[2].replace(impl, "triton stale plan", 1)
    assert stale != pod[2]
    pod_file.write_text(pod[0] + pod[1] + stale + pod[3])
    serial_lines = [ln for ln in serial[1:] if next(csv.reader([ln]))[1] in keys]
    assert len(serial_lines) == 3
    serial_file.write_text(serial[0] + "".join(serial_lines))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "drop_stale_plans.py"), str(tmp_path),
                        "--methods", "POD", "--pair", "OURS_Serial"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "1 batches with a changed plan; dropped 2 lines" in r.stdout
    assert pod_file.read_text() == pod[0] + pod[1] + pod[3]  # the other lines byte for byte
    assert serial_file.read_text() == serial[0] + serial_lines[0] + serial_lines[2]


def test_noisy_selects_batches_by_spread(tmp_path):
    pod = _lines(SHIPPED[1], "POD")
    header = next(csv.reader([pod[0]]))
    recs = [next(csv.reader([ln])) for ln in pod[1:4]]
    i_iqr, i_med = header.index("iqr_ms"), header.index("median_ms")
    recs[1][i_iqr] = str(0.2 * float(recs[1][i_med]))
    recs[2][i_iqr] = str(0.01 * float(recs[2][i_med]))
    path = tmp_path / "extra-POD.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(recs)
    mod = _script()
    assert mod.noisy_rows([str(path)], {"POD"}, 0.05) == {recs[1][header.index("row_key")]}
    assert mod.noisy_rows([str(path)], {"OURS_Serial"}, 0.05) == set()


def test_shipped_figure11_lines_record_the_current_plan():
    mod = _script()
    paths = sorted(glob.glob(str(RAW / "*.csv")))
    assert len(paths) >= 8
    assert mod.stale_rows(paths, {"POD", "OURS_CTA"}) == set()
