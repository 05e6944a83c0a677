"""Figure-7 micro-benchmark: YAML validation, the analysis on hand-made numbers, the plot, and a
compile of the CUDA source for sm_80 and sm_90 (the GPU run is not possible on a CPU machine)."""
import shutil
import subprocess

import pandas as pd
import pytest

from analysis.microbench import build_table, summarize
from experiments.microbench_run import MicrobenchError, command, load_config
from figures.figure7 import plot

CONFIG = "experiments/microbench/figure7.yaml"


def test_config_and_command():
    cfg = load_config(CONFIG)
    cmd = command("./bench", cfg)
    assert cmd[:3] == ["./bench", "--blocks", "2048"] and "--iters" in cmd
    assert cmd[cmd.index("--iters") + 1] == "20,40,60,80,100,120,140,160,180,200"


def test_bad_field_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(open(CONFIG).read().replace("threads: 256", "threads: 100"))
    with pytest.raises(MicrobenchError, match=r"bad.yaml: threads: 100 is not a multiple of 32"):
        load_config(p)
    p.write_text(open(CONFIG).read() + "repeat: 3\n")
    with pytest.raises(MicrobenchError, match="repeat"):
        load_config(p)


def _raw():
    rows = []
    for it, (mem, comp) in {20: (1.0, 0.5), 40: (1.0, 2.0)}.items():
        times = {"memory_only": mem, "compute_only": comp, "serial": mem + comp, "streams": mem + comp - 0.1,
                 "intra_thread": 1.9, "warp_parallel": 1.5, "cta_parallel": 1.4, "sm_aware_cta": max(mem, comp) * 1.1}
        for v, t in times.items():
            rows.append({"compute_iters": it, "variant": v, "time_ms_median": t, "verified": 1,
                         "gpu_name": "G", "sm_count": 7})
    rows[-2]["verified"], rows[-2]["time_ms_median"] = 0, None   # cta_parallel failed at 40
    return pd.DataFrame(rows)


def test_analysis_numbers():
    t = build_table(_raw()).set_index("compute_iters")
    assert t.loc[20, "ms_ideal"] == 1.0 and t.loc[40, "ms_ideal"] == 2.0
    assert t.loc[20, "compute_share"] == pytest.approx(0.5 / 1.5)
    assert t.loc[20, "speedup_sm_aware_cta"] == pytest.approx(1.5 / 1.1)
    assert t.loc[40, "over_ideal_warp_parallel"] == pytest.approx(0.75)
    assert pd.isna(t.loc[40, "ms_cta_parallel"]) and t.loc[40, "failed_variants"] == "cta_parallel"
    s = summarize(t.reset_index()).set_index("variant")
    assert s.loc["cta_parallel", "n"] == 1 and s.loc["serial", "mean_speedup_over_serial"] == 1.0


def test_plot_writes_png(tmp_path):
    fig = plot(build_table(_raw()))
    out = tmp_path / "f7.png"
    fig.savefig(out)
    assert out.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: install the CUDA toolkit "
                    "(or pip install nvidia-cuda-nvcc-cu12 and put its bin/ on PATH)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles(tmp_path, arch):
    ptx = tmp_path / "bench.ptx"
    r = subprocess.run(["nvcc", "-O3", f"-arch={arch}", "-ptx", "-o", str(ptx), "kernels/microbench/fusion_bench.cu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = ptx.read_text()
    assert "%smid" in text                      # the SM-aware variant reads the SM id
    assert "bar.sync \t0;" in text or "bar.sync 0;" in text or "barrier.sync 0;" in text
    # named barriers: an id and a thread count in registers (ids 1 and 2 for the two halves)
    assert any(line.strip().startswith(("bar.sync %r", "barrier.sync %r")) and "," in line
               for line in text.splitlines())
