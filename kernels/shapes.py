"""Model shapes and hybrid-batch specs with their FLOP and byte counts: plain data, no torch.

Analysis (useful work per row, physical limits) and plotting use these on machines without torch;
kernels/workload.py re-exports them beside the device tensors of a batch (``HybridBatch``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


# Element size in bytes of each dtype name a YAML may use, and the aliases it may use for them.
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}


def dtype_name(name: str) -> str:
    """The canonical dtype name for a name used in YAML ('float16', 'bfloat16', also 'fp16'/'bf16')."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPE_BYTES)}")
    return name


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name."""
    return DTYPE_BYTES[dtype_name(name)]


@dataclass(frozen=True)
class ModelShape:
    """Attention shape of one model on one GPU (heads already divided by tensor parallelism)."""

    name: str
    q_heads: int
    kv_heads: int
    head_dim: int
    layers: int = 32
    params_bytes: float = 0.0  # whole model, all GPUs; used to size decode batches to memory
    tp: int = 1

    def __post_init__(self):
        if self.q_heads <= 0 or self.kv_heads <= 0 or self.q_heads % self.kv_heads:
            raise ValueError(
                f"model {self.name}: q_heads ({self.q_heads}) must be a positive multiple of kv_heads ({self.kv_heads})")
        if self.head_dim not in (64, 128, 256):
            raise ValueError(f"model {self.name}: head_dim must be 64, 128 or 256, got {self.head_dim}")

    @property
    def group_size(self) -> int:
        return self.q_heads // self.kv_heads


@dataclass(frozen=True)
class BatchSpec:
    """One hybrid batch: a prefill chunk of ``prefill_len`` tokens attending to ``prefill_kv_len``
    keys (its own tokens last, causal bottom-right) plus ``decode_batch`` decodes of ``decode_ctx``
    keys each. ``prefill_len`` 0 or ``decode_batch`` 0 leaves that part out."""

    model: ModelShape
    dtype: str = "float16"
    prefill_len: int = 0
    prefill_kv_len: int = 0
    decode_batch: int = 0
    decode_ctx: int = 0
    page_size: int = 16
    causal: bool = True

    def __post_init__(self):
        dtype_name(self.dtype)
        if self.prefill_len < 0 or self.decode_batch < 0:
            raise ValueError("prefill_len and decode_batch must be >= 0")
        if self.prefill_len and self.prefill_kv_len < self.prefill_len:
            raise ValueError(f"prefill_kv_len ({self.prefill_kv_len}) must be >= prefill_len ({self.prefill_len})")
        if self.decode_batch and self.decode_ctx <= 0:
            raise ValueError("decode_ctx must be > 0 when decode_batch > 0")
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")
        if not self.prefill_len and not self.decode_batch:
            raise ValueError("a hybrid batch needs a prefill chunk or decodes")

    @property
    def has_prefill(self) -> bool:
        return self.prefill_len > 0

    @property
    def has_decode(self) -> bool:
        return self.decode_batch > 0

    @property
    def sm_scale(self) -> float:
        return 1.0 / math.sqrt(self.model.head_dim)

    def prefill_pairs(self) -> int:
        """(query, key) pairs the prefill attends to per head (causal bottom-right)."""
        lq, lk = self.prefill_len, self.prefill_kv_len
        if not self.causal:
            return lq * lk
        return lq * (lk - lq) + lq * (lq + 1) // 2

    def flops(self) -> dict:
        """Matrix FLOPs (QK^T and PV) of each part."""
        m = self.model
        per_pair = 4 * m.head_dim * m.q_heads
        return {"prefill": per_pair * self.prefill_pairs(),
                "decode": per_pair * self.decode_batch * self.decode_ctx}

    def bytes_moved(self) -> dict:
        """Fewest device-memory bytes of each part: Q, K, V read once, O written once."""
        m, e = self.model, dtype_bytes(self.dtype)
        d = m.head_dim
        p = (2 * self.prefill_len * m.q_heads * d + 2 * self.prefill_kv_len * m.kv_heads * d) * e
        dec = (2 * self.decode_batch * m.q_heads * d + 2 * self.decode_batch * self.decode_ctx * m.kv_heads * d) * e
        return {"prefill": p if self.has_prefill else 0, "decode": dec}

    def replace(self, **kw) -> "BatchSpec":
        return dataclasses.replace(self, **kw)


__all__ = ["ModelShape", "BatchSpec", "DTYPE_BYTES", "DTYPE_ALIASES", "dtype_name", "dtype_bytes"]
