"""The Hopper POD kernel (kernels/hopper, Gluon) compiled ahead of time for sm_90a on the CPU.

Gluon has no CPU interpreter: correctness of the index math is checked against the reference by
tests/test_hopper_schedule.py (a torch replay of the kernel's algorithm) and on the GPU by
experiments/studies/hopper_check.yaml. Here every variant the methods launch at head dims 64/128
(and prefill/decode at 256), fp16 and bf16, is compiled for sm_90a in a clean process (no
TRITON_INTERPRET) and its PTX/SASS checked: asynchronous wgmma (HGMMA) in the prefill, mma.sync
in the decode, setmaxnreg, TMA loads with mbarrier waits, no local memory (no spills), shared
memory within 227 KB (and within half an SM for the 2-CTA decode variant).
"""
from __future__ import annotations

import pytest

from tests.clean_process import json_lines_of_module

SMEM_PER_BLOCK = 227 * 1024
SMEM_PER_SM = 228 * 1024

VARIANTS = ([f"prefill:{d}:{dt}" for d in (64, 128) for dt in ("float16", "bfloat16")] + ["prefill:256:bfloat16"]
            + [f"pod:{d}:{dt}" for d in (64, 128) for dt in ("float16", "bfloat16")]
            + ["decode:64:float16", "decode:128:bfloat16", "decode:256:float16"]
            + ["prefill:128:float16:pingpong", "prefill:256:bfloat16:pingpong", "pod:128:bfloat16:pingpong"]
            # each decode request's first row from kv_starts (a serving pool's layout)
            + ["pod:128:float16:kv_starts", "decode:64:bfloat16:kv_starts"])


@pytest.fixture(scope="module")
def reports():
    out = {}
    for rep in json_lines_of_module("kernels.hopper.aot", *VARIANTS, timeout=300):
        flags = ",".join(sorted(rep.get("options", {})))
        out[f"{rep['mode']}:{rep['head_dim']}:{rep['dtype']}" + (f":{flags}" if flags else "")] = rep
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_without_spills(reports, variant):
    rep = reports[variant]
    assert "error" not in rep, rep.get("error")
    assert rep["ptx"]["ld_local"] == 0 and rep["ptx"]["st_local"] == 0
    if "sass" in rep:
        assert rep["sass"]["LDL"] == 0 and rep["sass"]["STL"] == 0, rep["sass"]
        assert rep.get("local", 0) == 0 and rep.get("stack", 0) == 0
    # setmaxnreg: registers moved between the partitions, under the launch cap
    assert rep["ptx"]["setmaxnreg"] > 0
    assert rep["maxnreg_directive"] == [rep["launch_regs"]]
    assert rep["ptx"]["tma_load"] > 0 and rep["ptx"]["mbarrier_wait"] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_memory_fits(reports, variant):
    rep = reports[variant]
    assert "error" not in rep, rep.get("error")
    assert rep["shared"] <= SMEM_PER_BLOCK
    assert rep["shared"] >= rep["smem_operands"]
    if rep["ctas_per_sm"] == 2:
        assert 2 * (rep["shared"] + 1024) <= SMEM_PER_SM
    else:
        # one CTA per SM, which the persistent grid assumes: its registers (launch cap x threads)
        # or its shared memory leave no room for a second
        regs = rep["launch_regs"] * rep["num_warps"] * 32
        assert regs > 65536 // 2 or rep["shared"] > SMEM_PER_SM // 2 - 1024


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.startswith("decode")])
def test_prefill_uses_async_wgmma(reports, variant):
    rep = reports[variant]
    d = rep["head_dim"]
    assert rep["ptx"]["wgmma"] > 0 and rep["ptx"]["wgmma_wait"] > 0
    assert f"m64n{d}k16" in rep["wgmma_shapes"]            # O += P V, N = head dim
    if "sass" in rep:
        assert rep["sass"]["HGMMA"] > 0 and rep["sass"]["USETMAXREG"] > 0
    # consumers get the registers, producers give theirs back
    assert 24 in rep["setmaxnreg_values"] and max(rep["setmaxnreg_values"]) >= 192


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.startswith("prefill")])
def test_decode_uses_mma_sync(reports, variant):
    rep = reports[variant]
    assert rep["ptx"]["mma_sync"] > 0
    if rep["mode"] == "decode":
        assert rep["ptx"]["wgmma"] == 0


def test_pod_256_is_refused_with_a_reason():
    from kernels.hopper.plan import default_tiles
    with pytest.raises(ValueError, match="head dim 256"):
        default_tiles("pod", 256)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.endswith(":pingpong")])
def test_pingpong_adds_the_turn_barriers(reports, variant):
    """Ping-pong: each prefill warpgroup waits for its turn and hands it over around every wgmma
    batch it issues (3 issue points: the first QK^T, the loop's QK^T + PV, the last PV), so the
    PTX gains waits and arrives over the same variant without it; nothing else changes in kind."""
    rep, base = reports[variant], reports[variant.rsplit(":", 1)[0]]
    assert rep["options"] == {"pingpong": True} and base["options"] == {}
    for k in ("mbarrier_wait", "mbarrier_arrive"):
        assert rep["ptx"][k] >= base["ptx"][k] + 3 * 2, (k, rep["ptx"][k], base["ptx"][k])
    assert rep["ptx"]["wgmma"] == base["ptx"]["wgmma"]


def test_kv_starts_variant_reads_each_requests_first_row(reports):
    """The KV_STARTS variant differs from the dense one by the load of kv_starts[b] (one more
    global load); the rest of the pipeline, registers and shared memory are the same."""
    dense, starts = reports["pod:128:float16"], reports["pod:128:float16:kv_starts"]
    assert starts["ptx"]["ld_global"] == dense["ptx"]["ld_global"] + 1
    same = ("wgmma", "mma_sync", "tma_load", "setmaxnreg", "mbarrier_wait")
    assert {k: starts["ptx"][k] for k in same} == {k: dense["ptx"][k] for k in same}
    assert starts["shared"] == dense["shared"] and starts["setmaxnreg_values"] == dense["setmaxnreg_values"]
