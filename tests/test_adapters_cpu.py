"""CPU checks of the FlashAttention and FlashInfer adapters (smoke mode: no GPU needed)."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.registry import MethodUnavailable, create, load_all
from kernels.workload import BatchSpec, HybridBatch, ModelShape

CPU = torch.device("cpu")
FA_CPU_METHODS = ["FA_prefill", "FA_decode", "FA_BackToBack"]
FI_METHODS = ["FI_prefill_auto", "FI_prefill_fa2", "FI_decode", "FI_Batched_fa2", "FI_Batched_auto", "FI_POD"]
# Relative Frobenius error allowed against the float64 reference (a few ulps of the input dtype).
TOL = {"float16": 5e-3, "bfloat16": 2e-2}


def naive_attention(q, k, v, kv_len: int, causal: bool) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(d)) v for one request: q (Lq,H,d), k/v (>=kv_len,Hkv,d)."""
    lq, h, d = q.shape
    g = h // k.shape[1]
    q64 = q.double()
    k64 = k[:kv_len].double().repeat_interleave(g, dim=1)
    v64 = v[:kv_len].double().repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q64, k64) / math.sqrt(d)
    if causal:
        i = torch.arange(lq)[:, None]
        j = torch.arange(kv_len)[None, :]
        s = s.masked_fill(j > kv_len - lq + i, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v64)


def reference(batch: HybridBatch) -> dict:
    s = batch.spec
    ref = {}
    if s.has_prefill:
        ref["prefill"] = naive_attention(batch.q_p, batch.k_p, batch.v_p, s.prefill_kv_len, causal=True)
    if s.has_decode:
        ref["decode"] = torch.stack([naive_attention(batch.q_d[b:b + 1], batch.k_d[b], batch.v_d[b], s.decode_ctx,
                                                     causal=True)[0] for b in range(s.decode_batch)])
    return ref


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref))


def tiny_batch(head_dim: int, dtype: str) -> HybridBatch:
    model = ModelShape("tiny-gqa3", q_heads=6, kv_heads=2, head_dim=head_dim)
    spec = BatchSpec(model, dtype=dtype, prefill_len=37, prefill_kv_len=101, decode_batch=5, decode_ctx=77,
                     page_size=16)
    return HybridBatch.allocate(spec, device="cpu", seed=1)


def test_registry_has_all_methods():
    names = set(load_all())
    assert {"FA_Streams", *FA_CPU_METHODS, *FI_METHODS} <= names


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("name", FA_CPU_METHODS)
def test_fa_methods_match_reference(name, head_dim, dtype):
    batch = tiny_batch(head_dim, dtype)
    method = create(name)
    assert method.unavailable_reason(CPU) is None
    outputs = method.prepare(batch)()
    assert method.info()["impl"] == "torch_sdpa_cpu"
    assert set(outputs) == set(method.parts)
    ref = reference(batch)
    for part in method.parts:
        out = outputs[part]
        assert out.shape == ref[part].shape
        assert out.dtype == batch.q.dtype
        assert rel_err(out, ref[part]) < TOL[dtype], part


def test_prefill_is_bottom_right_causal():
    """The last prefill query sees every key; changing a key after the first query's last
    visible key must not change the first query's output."""
    batch = tiny_batch(64, "float16")
    method = create("FA_prefill")
    before = method.prepare(batch)()["prefill"].clone()
    s = batch.spec
    first_visible_end = s.prefill_kv_len - s.prefill_len + 1
    batch.k_p[first_visible_end:] += 1.0
    after = method.prepare(batch)()["prefill"]
    assert torch.equal(before[0], after[0])
    assert not torch.equal(before[-1], after[-1])


def test_combined_methods_need_both_parts():
    model = ModelShape("tiny-gqa3", q_heads=6, kv_heads=2, head_dim=64)
    batch = HybridBatch.allocate(BatchSpec(model, decode_batch=3, decode_ctx=50), device="cpu")
    with pytest.raises(MethodUnavailable):
        create("FA_BackToBack").prepare(batch)
    assert create("FA_decode").prepare(batch)()["decode"].shape == (3, 6, 64)


@pytest.mark.parametrize("name", ["FA_Streams", *FI_METHODS])
def test_cuda_only_methods_say_why_on_cpu(name):
    method = create(name)
    reason = method.unavailable_reason(CPU)
    assert reason and "cuda" in reason.lower()
    with pytest.raises(MethodUnavailable):
        method.prepare(tiny_batch(64, "float16"))


def test_missing_flashinfer_says_what_to_install():
    from kernels.adapters import flashinfer as fi_adapter

    module, reason = fi_adapter._import()
    if module is not None:
        pytest.skip("flashinfer is installed here")
    assert reason.startswith("flashinfer is not installed: pip install flashinfer-python")
