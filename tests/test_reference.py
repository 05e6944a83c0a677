"""The float32 reference against a naive float64 loop, and check_outputs."""
import math

import pytest
import torch

from kernels.reference import TOLERANCES, check_outputs, reference_attention, reference_outputs
from kernels.workload import BatchSpec, HybridBatch, ModelShape


def naive(q, k, v, kv_lens, causal, scale):
    """Per (batch, head, query) float64 loop."""
    B, Lq, H, d = q.shape
    g = H // k.shape[2]
    out = torch.zeros(B, Lq, H, d, dtype=torch.float64)
    for b in range(B):
        n = int(kv_lens[b])
        for h in range(H):
            kk, vv = k[b, :n, h // g].double(), v[b, :n, h // g].double()
            for i in range(Lq):
                last = n - 1 if not causal else min(n - 1, n - Lq + i)
                if last < 0:
                    continue
                s = kk[: last + 1] @ q[b, i, h].double() * scale
                out[b, i, h] = torch.softmax(s, 0) @ vv[: last + 1]
    return out


@pytest.mark.parametrize("B,Lq,H,Hkv,d,cap,lens,causal", [
    (1, 7, 6, 2, 64, 23, [19], True),          # GQA ratio 3, Lq < Lk, odd lengths
    (1, 13, 4, 4, 64, 13, [13], True),         # square causal, MHA
    (3, 1, 6, 2, 128, 37, [37, 5, 21], True),  # decode with ragged lengths
    (2, 5, 8, 2, 64, 17, [11, 17], False),     # non-causal GQA 4
    (1, 9, 3, 1, 64, 12, [6], True),           # kv_len < Lq: the first rows see no key
])
@pytest.mark.parametrize("chunk_elems", [2 ** 26, 50])  # 50 forces one batch and one row per chunk
def test_matches_naive(B, Lq, H, Hkv, d, cap, lens, causal, chunk_elems):
    g = torch.Generator().manual_seed(B * 100 + Lq)
    q = torch.randn(B, Lq, H, d, generator=g).half()
    k = torch.randn(B, cap, Hkv, d, generator=g).half()
    v = torch.randn(B, cap, Hkv, d, generator=g).half()
    for b, n in enumerate(lens):  # keys past kv_len must never reach the result
        k[b, n:] = float("nan")
        v[b, n:] = float("nan")
    scale = 1 / math.sqrt(d) * 1.3
    ref = reference_attention(q, k, v, torch.tensor(lens, dtype=torch.int32), causal, scale, chunk_elems=chunk_elems)
    assert ref.dtype == torch.float32 and ref.shape == (B, Lq, H, d)
    exp = naive(q, k, v, lens, causal, scale)
    torch.testing.assert_close(ref.double(), exp, rtol=1e-5, atol=1e-5)


def _batch(dtype="float16"):
    m = ModelShape("t", q_heads=6, kv_heads=2, head_dim=64)
    spec = BatchSpec(m, dtype, prefill_len=5, prefill_kv_len=21, decode_batch=3, decode_ctx=19, page_size=8)
    return HybridBatch.allocate(spec, "cpu", seed=1, prefill_kv_cap=40)


def test_reference_outputs_of_batch():
    b = _batch()
    ref = reference_outputs(b)
    assert ref["prefill"].shape == (5, 6, 64) and ref["decode"].shape == (3, 6, 64)
    exp_p = naive(b.q_p[None], b.k_p[None], b.v_p[None], [21], True, b.spec.sm_scale)[0]
    exp_d = naive(b.q_d[:, None], b.k_d, b.v_d, [19] * 3, True, b.spec.sm_scale)[:, 0]
    torch.testing.assert_close(ref["prefill"].double(), exp_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref["decode"].double(), exp_d, rtol=1e-5, atol=1e-5)
    b2 = b.with_prefill(5, 40)
    assert reference_outputs(b2)["prefill"].shape == (5, 6, 64)


def test_check_outputs():
    ref = reference_outputs(_batch())
    good = {k: v.half() for k, v in ref.items()}
    r = check_outputs(good, ref, "float16", ("prefill", "decode"))
    assert r.ok and 0 < r.rel_err < TOLERANCES["float16"] and r.max_abs_err < 1e-2 and r.reason == ""
    assert check_outputs({k: v.bfloat16() for k, v in ref.items()}, ref, "bfloat16").ok
    assert not check_outputs({k: v.bfloat16() for k, v in ref.items()}, ref, "float32").ok
    # only the listed parts are checked
    assert check_outputs({"decode": good["decode"]}, ref, "float16", ("decode",)).ok

    r = check_outputs({"decode": good["decode"]}, ref, "float16", ("prefill", "decode"))
    assert not r.ok and "prefill" in r.reason and "missing" in r.reason
    bad = dict(good, decode=good["decode"].clone())
    bad["decode"][1, 2, 3] = float("nan")
    r = check_outputs(bad, ref, "float16", ("prefill", "decode"))
    assert not r.ok and "decode" in r.reason and "NaN" in r.reason
    bad["decode"][1, 2, 3] = float("inf")
    assert not check_outputs(bad, ref, "float16").ok
    r = check_outputs(dict(good, prefill=good["prefill"][:4]), ref, "float16")
    assert not r.ok and "shape" in r.reason and "(4, 6, 64)" in r.reason
    r = check_outputs(dict(good, decode=good["decode"] * 1.05), ref, "float16")
    assert not r.ok and r.reason.startswith("decode: rel_err") and 0.04 < r.rel_err < 0.06
    assert r.max_abs_err > 0.01
    wrong = dict(good, prefill=torch.zeros_like(good["prefill"]))
    r = check_outputs(wrong, ref, "fp16")
    assert not r.ok and r.rel_err == pytest.approx(1.0)
