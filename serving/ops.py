"""The non-attention kernels of a Llama layer: RMSNorm (plain and fused with the residual add),
rotary embedding (NeoX halves, as Llama checkpoints in HF layout use) and SiLU-and-mul.

On a CUDA device with FlashInfer importable they are FlashInfer's fused kernels (what vLLM and
SGLang call); otherwise PyTorch compositions that compute the same functions. ``Ops.impl`` names
the set in use and is recorded on every result row.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _flashinfer():
    try:
        import flashinfer  # noqa: F401
        import flashinfer.activation
        import flashinfer.norm
        import flashinfer.rope
    except Exception as e:  # not installed, or broken: the torch set is used and labelled
        return None, f"{type(e).__name__}: {e}"
    return flashinfer, None


class TorchOps:
    """Reference compositions (any device, any float dtype)."""

    impl = "torch"

    def __init__(self, rope_theta: float, head_dim: int, eps: float):
        self.theta, self.head_dim, self.eps = rope_theta, head_dim, eps
        self._inv_freq = None

    def rmsnorm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def add_rmsnorm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor):
        """(rmsnorm(x + residual) * w, x + residual)."""
        residual = x + residual
        return self.rmsnorm(residual, w), residual

    def rope_(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> None:
        """In place on q (T, H, d) and k (T, Hkv, d) at positions ``pos`` (T,)."""
        d = self.head_dim
        if self._inv_freq is None or self._inv_freq.device != q.device:
            self._inv_freq = self.theta ** (-torch.arange(0, d, 2, device=q.device, dtype=torch.float32) / d)
        ang = pos.float()[:, None] * self._inv_freq[None, :]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        for t in (q, k):
            a, b = t[..., : d // 2].float(), t[..., d // 2:].float()
            t.copy_(torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(t.dtype))

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        return F.silu(x[..., :h]) * x[..., h:]


class FlashInferOps(TorchOps):
    """FlashInfer's fused kernels (CUDA)."""

    # FlashInfer modules loaded (experiments/flashinfer_modules.py); one each, whatever the shape
    jit_modules = (("norm", ""), ("rope", ""), ("silu_and_mul", ""))

    def __init__(self, rope_theta: float, head_dim: int, eps: float):
        super().__init__(rope_theta, head_dim, eps)
        fi, _ = _flashinfer()
        self.fi = fi
        self.impl = f"flashinfer {fi.__version__} (rmsnorm, fused_add_rmsnorm, apply_rope_pos_ids_inplace, silu_and_mul)"

    def rmsnorm(self, x, w):
        return self.fi.norm.rmsnorm(x, w, eps=self.eps)

    def add_rmsnorm(self, x, residual, w):
        # in place: residual += x; x = rmsnorm(residual) * w
        self.fi.norm.fused_add_rmsnorm(x, residual, w, eps=self.eps)
        return x, residual

    def rope_(self, q, k, pos):
        self.fi.rope.apply_rope_pos_ids_inplace(q, k, pos, interleave=False, rope_theta=self.theta)

    def silu_mul(self, x):
        return self.fi.activation.silu_and_mul(x)


def make_ops(device: torch.device, rope_theta: float, head_dim: int, eps: float, prefer: str = "auto"):
    """FlashInfer's kernels on CUDA when importable (``prefer`` 'auto' or 'flashinfer'), else torch.
    ``prefer='flashinfer'`` fails loudly when they are missing."""
    device = torch.device(device)
    if prefer not in ("auto", "flashinfer", "torch"):
        raise ValueError("ops must be auto, flashinfer or torch")
    if prefer != "torch" and device.type == "cuda":
        fi, why = _flashinfer()
        if fi is not None:
            return FlashInferOps(rope_theta, head_dim, eps)
        if prefer == "flashinfer":
            raise RuntimeError(f"ops: flashinfer asked for but not importable ({why}); "
                               "pip install flashinfer-python")
    elif prefer == "flashinfer":
        raise RuntimeError("ops: FlashInfer's fused kernels need a CUDA device")
    return TorchOps(rope_theta, head_dim, eps)
