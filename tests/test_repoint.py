"""Prepared launches re-pointed at another layer's tensors (kernels/common/repoint.py), as the
serving engine's POD backend runs them, and the serving view of the KV cache they read.

The Gluon Hopper launches cannot run here (no interpreter); their arguments can be built on the
CPU. So: the Hopper prefill's TMA descriptors after re-pointing are those a launch prepared on
the other layer has, and the kernel's algorithm (kernels/hopper/emulate.py) on the serving view
equals the reference attention over the pages the block tables name. Triton launches are built
the same way; the engine's POD backend runs them under the interpreter in test_serving_engine.py.
"""
from __future__ import annotations

import pytest
import torch

from kernels.common.repoint import Repointer, place_outputs, prepared_launches
from kernels.hopper.emulate import emulate
from kernels.hopper.launch import HopperLaunch, LayoutUnsupported, decode_kv_starts
from kernels.hopper.plan import MODE_POD, MODE_PREFILL, HopperConfig
from kernels.hopper.plan import make_plan as hopper_plan
from kernels.pod.launch import MODE_DECODE as TRITON_DECODE, MODE_POD as TRITON_POD, MODE_PREFILL as TRITON_PREFILL
from kernels.pod.launch import PodLaunch, prepare_launch, prepare_serial
from kernels.pod.plan import PodConfig
from kernels.pod.plan import make_plan as pod_plan
from kernels.reference import reference_attention
from kernels.workload import BatchSpec, ModelShape
from serving.backends import _PodView

BS, LAYERS, BLOCKS = 16, 2, 48
# GQA group of 3, a prefill chunk of 37 queries over 85 keys starting at page 3 (token 48), three
# decodes of 40, 33 and 20 keys whose pages lie apart, as the engine's pool hands them out
MODEL = ModelShape("t", 6, 2, 64)
PREFILL_BASE, PREFILL_LEN, PREFILL_KV = 48, 37, 85
DECODE_PAGES = [[10, 11, 12], [20, 21, 22], [30, 31, 32]]
DECODE_KV = [40, 33, 20]


def pools(dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (LAYERS, BLOCKS, BS, MODEL.kv_heads, MODEL.head_dim)
    return (torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype))


def view(layer, k, v, q, decode_pages=DECODE_PAGES, decode_kv=DECODE_KV, prefill=True):
    B = len(decode_kv)
    lp, kv_p = (PREFILL_LEN, PREFILL_KV) if prefill else (0, 0)
    spec = BatchSpec(MODEL, "float16", prefill_len=lp, prefill_kv_len=kv_p, decode_batch=B,
                     decode_ctx=max(decode_kv, default=0), page_size=BS)
    bt_p = (PREFILL_BASE // BS + torch.arange(-(-PREFILL_KV // BS), dtype=torch.int32))[None]
    bt_d = torch.tensor(decode_pages, dtype=torch.int32) if B else torch.zeros((1, 1), dtype=torch.int32)
    return _PodView(spec, torch.device("cpu"), q[: lp + B], k[layer], v[layer],
                    torch.tensor(decode_kv, dtype=torch.int32), bt_d, bt_p, PREFILL_BASE if prefill else 0)


def queries(seed, dtype=torch.float16, tokens=PREFILL_LEN + len(DECODE_KV)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((tokens, MODEL.q_heads, MODEL.head_dim), generator=g).to(dtype)


def paged_reference(q, k, v, layer, prefill=True):
    """The reference attention over the pages the block tables name (independent of the view)."""
    out = {}
    if prefill:
        pages = PREFILL_BASE // BS + torch.arange(-(-PREFILL_KV // BS))
        kp = k[layer][pages].reshape(-1, MODEL.kv_heads, MODEL.head_dim)[:PREFILL_KV]
        vp = v[layer][pages].reshape(-1, MODEL.kv_heads, MODEL.head_dim)[:PREFILL_KV]
        out["prefill"] = reference_attention(q[None, :PREFILL_LEN], kp[None], vp[None], [PREFILL_KV])[0]
    lp = PREFILL_LEN if prefill else 0
    kd = torch.stack([k[layer][p].reshape(-1, MODEL.kv_heads, MODEL.head_dim) for p in DECODE_PAGES])
    vd = torch.stack([v[layer][p].reshape(-1, MODEL.kv_heads, MODEL.head_dim) for p in DECODE_PAGES])
    out["decode"] = reference_attention(q[lp: lp + len(DECODE_KV), None], kd, vd, DECODE_KV)[:, 0]
    return out


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr(), tuple(a.shape), a.stride(), a.dtype) == (b.data_ptr(), tuple(b.shape), b.stride(), b.dtype)


def test_hopper_prefill_reads_the_prefill_pages_of_the_serving_view():
    k, v = pools()
    q = queries(1)
    batch = view(1, k, v, q)
    plan = hopper_plan(batch.spec, 8, MODE_PREFILL, HopperConfig())
    got = emulate(batch, plan)["prefill"]
    ref = paged_reference(q, k, v, 1)["prefill"]
    assert ((got - ref).norm() / ref.norm()) < 2e-3


def test_hopper_launch_repointed_at_another_layer_has_that_layers_descriptors():
    k, v = pools()
    q0, q1 = queries(1), queries(2)
    b0, b1 = view(0, k, v, q0), view(1, k, v, q1)
    plan = hopper_plan(b0.spec, 8, MODE_PREFILL, HopperConfig())
    launch, on_layer1 = HopperLaunch(b0, plan), HopperLaunch(b1, plan)
    rp = Repointer(prepared_launches(launch), {"q": q0, "k": k[0], "v": v[0]})
    assert {slot[1] for slot in rp.slots} >= {"qp_desc", "kp_desc", "vp_desc"}
    rp.point({"q": q1, "k": k[1], "v": v[1]})
    for name in ("qp_desc", "kp_desc", "vp_desc"):
        got, want = launch.kwargs[name], on_layer1.kwargs[name]
        assert same_view(got.base, want.base), name
        assert (got.block_shape, got.layout) == (want.block_shape, want.layout)
    # the other arguments (outputs, partials, counters, scalars) stay the launch's own
    for name, value in launch.kwargs.items():
        if name not in {s[1] for s in rp.slots} and isinstance(value, torch.Tensor):
            assert value.data_ptr() not in {q1.data_ptr(), k[1].data_ptr(), v[1].data_ptr()}


def test_fused_hopper_kernel_reads_each_requests_pages_wherever_they_lie():
    k, v = pools()
    q = queries(3)
    scattered = view(0, k, v, q)
    plan = hopper_plan(scattered.spec, 8, MODE_POD, HopperConfig())
    assert decode_kv_starts(scattered).tolist() == [p[0] * BS for p in DECODE_PAGES]
    launch = HopperLaunch(scattered, plan)
    assert launch.meta["KV_STARTS"] and same_view(launch.kwargs["kd_desc"].base, k[0].reshape(-1, 128))
    got = emulate(scattered, plan)
    ref = paged_reference(q, k, v, 0)
    for part in ("prefill", "decode"):
        assert ((got[part] - ref[part]).norm() / ref[part].norm()) < 2e-3, part
    # the harness's layout (request b at row b * capacity) keeps the kernel's dense rows
    dense = view(0, k, v, q, decode_pages=[[b * 3 + i for i in range(3)] for b in range(3)])
    assert decode_kv_starts(dense) is None and "KV_STARTS" not in HopperLaunch(dense, plan).meta
    torn = view(0, k, v, q, decode_pages=[[10, 12, 11], [20, 21, 22], [30, 31, 32]])
    with pytest.raises(LayoutUnsupported, match="not contiguous"):
        HopperLaunch(torn, plan)


def test_triton_launches_repointed_and_writing_into_one_buffer():
    k, v = pools(torch.float32)
    q0, q1 = queries(1, torch.float32), queries(2, torch.float32)
    b0 = view(0, k, v, q0)
    cfg = PodConfig(kv_layout="paged", prefill_split=2, decode_split=2)
    plan = pod_plan(b0.spec, TRITON_POD, 8, cfg)
    run = prepare_launch(b0, plan, paged=True)
    (launch,) = prepared_launches(run)
    assert isinstance(launch, PodLaunch) and launch.split_p and launch.split_d
    out = torch.empty_like(q0)
    place_outputs([launch], out[:PREFILL_LEN], out[PREFILL_LEN:])
    assert launch.kwargs["op_ptr"] is launch.out_p and same_view(launch.out_p, out[:PREFILL_LEN])
    assert same_view(launch.merger.kwargs["o_p"], out[:PREFILL_LEN])
    assert same_view(launch.merger.kwargs["o_d"], out[PREFILL_LEN:])
    rp = Repointer([launch], {"q": q0, "k": k[0], "v": v[0]})
    rp.point({"q": q1, "k": k[1], "v": v[1]})
    assert same_view(launch.kwargs["qp_ptr"], q1[:PREFILL_LEN]) and same_view(launch.kwargs["qd_ptr"], q1[PREFILL_LEN:])
    assert same_view(launch.kwargs["kp_ptr"], k[1]) and same_view(launch.kwargs["vd_ptr"], v[1])
    run()
    ref = paged_reference(q1, k, v, 1)
    for part, rows in (("prefill", out[:PREFILL_LEN]), ("decode", out[PREFILL_LEN:])):
        assert ((rows.double() - ref[part]).norm() / ref[part].norm()) < 1e-4, part


def test_a_serial_run_lists_its_two_launches_in_order():
    k, v = pools(torch.float32)
    q = queries(1, torch.float32)
    b = view(0, k, v, q)
    cfg = PodConfig(kv_layout="paged")
    plan_p, plan_d = pod_plan(b.spec, TRITON_PREFILL, 8, cfg), pod_plan(b.spec, TRITON_DECODE, 8, cfg)
    run = prepare_serial(b, plan_p, plan_d, paged=True)
    launches = prepared_launches(run)
    assert [(x.do_p, x.do_d) for x in launches] == [(True, False), (False, True)]
    with pytest.raises(TypeError, match="no launch objects"):
        prepared_launches(lambda: None)


def test_repointing_at_a_tensor_of_another_geometry_is_refused():
    k, v = pools()
    q0 = queries(1)
    b0 = view(0, k, v, q0)
    launch = HopperLaunch(b0, hopper_plan(b0.spec, 8, MODE_PREFILL, HopperConfig()))
    rp = Repointer([launch], {"q": q0, "k": k[0], "v": v[0]})
    with pytest.raises(ValueError, match="differ from the tensor"):
        rp.point({"q": queries(2, tokens=PREFILL_LEN + 5), "k": k[1], "v": v[1]})
    with pytest.raises(ValueError, match="output of part 'p'"):
        place_outputs([launch], None, None)
