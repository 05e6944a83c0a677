"""Our Triton POD kernel's launches compiled ahead of time for sm_90 on the CPU (kernels/pod/aot.py,
in a clean process: an interpreted kernel does not compile): no local memory, and the CTAs per SM
the compiled launches fit, which the docs quote (docs/pod-kernel-notes.md) and the plan's tile sets
promise for the fused launches."""
from __future__ import annotations

import pytest

from kernels.pod.aot import SM_LIMITS, ctas_per_sm
from tests.clean_process import json_lines_of_module

LAUNCHES = ["decode:128:float16", "decode:64:bfloat16", "fused2:128:float16", "fused4:128:float16"]


@pytest.fixture(scope="module")
def reports():
    reps = json_lines_of_module("kernels.pod.aot", *LAUNCHES)
    return {f"{x['kind']}:{x['head_dim']}:{x['dtype']}": x for x in reps}


def test_residency_arithmetic():
    # registers bind: 128 x 128 threads = 16K of 64K
    assert ctas_per_sm(128, 39424, 4, 90) == 4
    # shared memory binds: 2 x (104,448 + 1,024 reserved) fit in 228 KB, 3 do not
    assert ctas_per_sm(92, 104448, 4, 90) == 2
    # registers round up to 8 per thread: 199 -> 200 x 256 threads = 51,200 of 65,536
    assert ctas_per_sm(199, 1024, 8, 90) == 1
    assert ctas_per_sm(32, 0, 1, 90) == SM_LIMITS[90]["ctas"]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_compiles_without_local_memory(reports, launch):
    rep = reports[launch]
    assert "error" not in rep, rep.get("error")
    assert rep["local"] == 0, rep


def test_what_an_sm_holds(reports):
    # the decode-alone launch: shared memory allows 2 per SM at head dim 128, 4 at 64 (the plan's
    # split heuristic counts 4: decode_split "measured" times the counts instead)
    assert reports["decode:128:float16"]["ctas_per_sm"] == 2
    assert reports["decode:64:bfloat16"]["ctas_per_sm"] == 4
    assert reports["decode:128:float16"]["plan_ctas_per_sm"] == 4
    # the fused tile sets: "2 CTAs/SM" fits 2; "4 CTAs/SM" at 3 stages fits 3 (default_tiles' docstring)
    assert reports["fused2:128:float16"]["ctas_per_sm"] == 2
    assert reports["fused4:128:float16"]["ctas_per_sm"] == 3
