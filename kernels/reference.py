"""The one float32 attention reference every method is checked against, and the check itself."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .workload import HybridBatch, dtype_of

# Relative (Frobenius) error allowed per input dtype: a few ulps of the output dtype, since
# kernels round P to the input dtype before the PV product.
TOLERANCES = {"float16": 5e-3, "bfloat16": 2e-2, "float32": 1e-4}

# Elements of one float32 working tensor (scores, or K/V upcast); a few live at once, so the
# reference needs roughly 4 * 4 * 2**26 B = 1 GiB on top of its inputs, on any shape.
DEFAULT_CHUNK_ELEMS = 2 ** 26


@contextlib.contextmanager
def _no_tf32():
    """TF32 would make the 'float32' reference only ~1e-3 accurate on Ampere+."""
    old_mm = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_mm
        torch.backends.cudnn.allow_tf32 = old_cudnn


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_lens: Sequence[int] | torch.Tensor, causal: bool = True,
                        sm_scale: float | None = None, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v in float32.

    q (B, Lq, H, d); k, v (B, Lk_cap, Hkv, d) of which the first ``kv_lens[b]`` keys are valid.
    GQA: q head h uses kv head h // (H // Hkv). Causal is bottom-right aligned: query i attends
    keys j <= kv_len - Lq + i. Rows that see no key give 0 (as FlashAttention does).
    Works in chunks of batch and query rows so memory stays bounded by ``chunk_elems``.
    Returns (B, Lq, H, d) float32.
    """
    B, Lq, H, d = q.shape
    Hkv = k.shape[2]
    if k.shape[0] != B or v.shape != k.shape or k.shape[3] != d or H % Hkv:
        raise ValueError(f"bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    g = H // Hkv
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    lens = [int(x) for x in (kv_lens.tolist() if torch.is_tensor(kv_lens) else kv_lens)]
    if len(lens) != B or any(n < 0 or n > k.shape[1] for n in lens):
        raise ValueError(f"kv_lens {lens[:8]}... do not fit k of shape {tuple(k.shape)}")
    out = torch.zeros((B, Lq, H, d), dtype=torch.float32, device=q.device)
    if Lq == 0 or B == 0:
        return out
    lmax_all = max(lens)
    # Batch chunk: its upcast K (or V) and one query row of scores must fit the budget.
    per_b = max(1, lmax_all) * max(Hkv * d, H)
    bc = max(1, min(B, chunk_elems // per_b))
    with _no_tf32(), torch.no_grad():
        for b0 in range(0, B, bc):
            b1 = min(B, b0 + bc)
            L = max(lens[b0:b1])
            if L == 0:
                continue
            kf = k[b0:b1, :L].float().permute(0, 2, 3, 1)   # (bc, Hkv, d, L)
            vf = v[b0:b1, :L].float().permute(0, 2, 1, 3)   # (bc, Hkv, L, d)
            lens_t = torch.tensor(lens[b0:b1], device=q.device)[:, None, None]  # (bc, 1, 1)
            j = torch.arange(L, device=q.device)[None, None, :]
            if min(lens[b0:b1]) < L:  # 0 * garbage (NaN) past a row's length would poison P @ V
                vf = vf.masked_fill((j >= lens_t)[..., None], 0.0)
            rc = max(1, min(Lq, chunk_elems // ((b1 - b0) * H * L)))
            for i0 in range(0, Lq, rc):
                i1 = min(Lq, i0 + rc)
                r = i1 - i0
                # (bc, r, Hkv, g, d) -> (bc, Hkv, g*r, d): q heads grouped under their kv head.
                qf = q[b0:b1, i0:i1].float().reshape(b1 - b0, r, Hkv, g, d).permute(0, 2, 3, 1, 4)
                qf = qf.reshape(b1 - b0, Hkv, g * r, d)
                s = torch.matmul(qf, kf).mul_(scale).view(b1 - b0, Hkv, g, r, L)
                i = torch.arange(i0, i1, device=q.device)[None, :, None]
                allowed = j < lens_t
                if causal:
                    allowed = allowed & (j <= lens_t - Lq + i)                 # (bc, r, L)
                allowed = allowed[:, None, None]                                # (bc, 1, 1, r, L)
                s.masked_fill_(~allowed, float("-inf"))
                p = torch.softmax(s, dim=-1)
                p = torch.where(allowed.any(-1, keepdim=True), p, torch.zeros((), device=q.device))
                o = torch.matmul(p.view(b1 - b0, Hkv, g * r, L), vf)          # (bc, Hkv, g*r, d)
                o = o.view(b1 - b0, Hkv, g, r, d).permute(0, 3, 1, 2, 4).reshape(b1 - b0, r, H, d)
                out[b0:b1, i0:i1] = o
                del s, p, o, qf
    return out


def reference_outputs(batch: HybridBatch, chunk_elems: int | None = None) -> dict:
    """Reference of each part of a hybrid batch: {"prefill": (Lq,H,d), "decode": (bs,H,d)} fp32."""
    s = batch.spec
    if chunk_elems is None:
        # fewer, larger chunks on a GPU (~5 GB of working tensors): the reference runs on every row
        chunk_elems = DEFAULT_CHUNK_ELEMS * (4 if batch.device.type == "cuda" else 1)
    ref = {}
    if s.has_prefill:
        ref["prefill"] = reference_attention(batch.q_p[None], batch.k_p[None], batch.v_p[None],
                                             [s.prefill_kv_len], causal=s.causal, sm_scale=s.sm_scale,
                                             chunk_elems=chunk_elems)[0]
    if s.has_decode:
        ref["decode"] = reference_attention(batch.q_d[:, None], batch.k_d, batch.v_d, batch.decode_seqlens,
                                            causal=True, sm_scale=s.sm_scale, chunk_elems=chunk_elems)[:, 0]
    return ref


@dataclass
class CheckResult:
    ok: bool
    max_abs_err: float
    rel_err: float
    reason: str = ""


def tolerance(dtype: str) -> float:
    """Relative-error tolerance for outputs computed from ``dtype`` inputs."""
    return TOLERANCES[str(dtype_of(dtype)).removeprefix("torch.")]


def check_outputs(outputs: dict, reference: dict, dtype: str, parts: Iterable[str] | None = None,
                  tol: float | None = None) -> CheckResult:
    """Compare each part of ``outputs`` with ``reference``: present, same shape, finite, and
    ||out - ref|| / ||ref|| within ``tol`` (default: the dtype tolerance). Reports the worst part's
    errors."""
    tol = tolerance(dtype) if tol is None else tol
    parts = list(reference) if parts is None else list(parts)
    worst_abs, worst_rel = 0.0, 0.0
    if not isinstance(outputs, dict):
        return CheckResult(False, float("nan"), float("nan"), f"outputs is {type(outputs).__name__}, not a dict")
    for part in parts:
        if part not in reference:
            return CheckResult(False, float("nan"), float("nan"), f"no reference for part {part!r}")
        ref = reference[part]
        out = outputs.get(part)
        if out is None:
            return CheckResult(False, float("nan"), float("nan"), f"{part}: output missing")
        if not torch.is_tensor(out):
            return CheckResult(False, float("nan"), float("nan"), f"{part}: output is {type(out).__name__}")
        if tuple(out.shape) != tuple(ref.shape):
            return CheckResult(False, float("nan"), float("nan"),
                               f"{part}: shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
        o = out.detach().to(device=ref.device, dtype=torch.float32)
        if not bool(torch.isfinite(o).all()):
            n_bad = int((~torch.isfinite(o)).sum())
            return CheckResult(False, float("nan"), float("nan"), f"{part}: {n_bad} non-finite values (NaN/Inf)")
        diff = o - ref
        abs_err = float(diff.abs().max()) if diff.numel() else 0.0
        ref_norm = float(torch.linalg.vector_norm(ref))
        diff_norm = float(torch.linalg.vector_norm(diff))
        rel = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
        worst_abs = max(worst_abs, abs_err)
        worst_rel = max(worst_rel, rel)
        if rel > tol:
            return CheckResult(False, worst_abs, worst_rel,
                               f"{part}: rel_err {rel:.3g} > tol {tol:g} ({dtype}), max_abs_err {abs_err:.3g}")
    return CheckResult(True, worst_abs, worst_rel, "")
