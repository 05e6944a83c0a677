"""The KV cache every attention backend reads in place.

One tensor per K and V: (layers, num_blocks, block_size, kv_heads, head_dim). Layer ``l``'s slice
is FlashInfer's paged NHD layout as is (page = block), and because a request holds one contiguous
block range (serving/scheduler.py, ``BlockPool``), its keys are also one dense (tokens, kv_heads,
head_dim) slice: FlashAttention-2 reads them through offsets (varlen ``cu_seqlens_k`` +
``seqused_k``) and our POD kernel through block tables, all without a copy.

How this differs from vAttention (the artifact's memory manager): vAttention reserves virtual
address space per request slot and maps 2 MB physical pages on demand as the sequence grows, so it
admits a request on its current length and preempts (recompute) when memory runs out. Here the
physical blocks of the whole request (prompt + output) are reserved at admission, so no request is
ever preempted, but fewer requests may run at once than under vAttention while prompts are young.
The block range must be contiguous (first fit); with unequal request lengths a free range can be
fragmented, which vAttention's virtual memory avoids.

Tensor parallelism: each rank's cache is built from its shard config (``model.shard_config``), so
it holds only that rank's kv heads (kv_heads / tp per token); the same block count then costs 1/tp
of the bytes, and for_gpu fits tp times more blocks. The block ids (and so the slots) are the same
on every rank: only rank 0 keeps a pool and schedules.
"""
from __future__ import annotations

import torch

from .model import LlamaConfig
from .scheduler import BlockPool


class KVCache:
    def __init__(self, cfg: LlamaConfig, num_blocks: int, block_size: int, dtype=torch.float16, device="cpu"):
        self.cfg, self.block_size, self.num_blocks = cfg, block_size, num_blocks
        self.device, self.dtype = torch.device(device), dtype
        shape = (cfg.layers, num_blocks, block_size, cfg.kv_heads, cfg.head_dim)
        # zeroed once: blocks never written (fast-forwarded steady states) hold finite values
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.pool = BlockPool(num_blocks, block_size)

    @classmethod
    def blocks_fitting(cls, cfg: LlamaConfig, block_size: int, budget_bytes: int, elem_bytes: int = 2) -> int:
        return int(budget_bytes // (cfg.kv_bytes_per_token(elem_bytes) * block_size))

    @classmethod
    def blocks_for_gpu(cls, cfg: LlamaConfig, block_size: int, dtype, device, fraction: float = 0.9,
                       headroom_gb: float = 8.0, max_blocks: int | None = None) -> int:
        """The blocks ``for_gpu`` would allocate on ``device`` now (tensor-parallel ranks take the
        minimum over ranks so that their pools agree)."""
        free, _ = torch.cuda.mem_get_info(device)
        budget = max(0, int(fraction * free - headroom_gb * 2 ** 30))
        n = cls.blocks_fitting(cfg, block_size, budget, torch.empty((), dtype=dtype).element_size())
        if max_blocks:
            n = min(n, max_blocks)
        return n

    @classmethod
    def for_gpu(cls, cfg: LlamaConfig, block_size: int, dtype, device, fraction: float = 0.9,
                headroom_gb: float = 8.0, max_blocks: int | None = None) -> "KVCache":
        """Size the cache to ``fraction`` of the GPU memory free after the weights, less
        ``headroom_gb`` for activations and FlashInfer workspaces."""
        n = cls.blocks_for_gpu(cfg, block_size, dtype, device, fraction, headroom_gb, max_blocks)
        if n < 1:
            raise MemoryError("no room for a KV cache")
        return cls(cfg, n, block_size, dtype, device)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def layer(self, li: int):
        """(k, v) of layer ``li`` in FlashInfer's paged NHD layout (num_blocks, block_size, Hkv, d)."""
        return self.k[li], self.v[li]

    def flat(self, li: int):
        """(k, v) of layer ``li`` as (num_blocks * block_size, Hkv, d): token t of a request whose
        range starts at block b is row b * block_size + t."""
        c = self.cfg
        n = self.num_blocks * self.block_size
        return self.k[li].view(n, c.kv_heads, c.head_dim), self.v[li].view(n, c.kv_heads, c.head_dim)

    def write(self, li: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Store the iteration's new keys and values (T, Hkv, d) at token rows ``slots`` (T,)."""
        fk, fv = self.flat(li)
        fk.index_copy_(0, slots, k)
        fv.index_copy_(0, slots, v)

    def token_base(self, rid: int) -> int:
        return self.pool.base(rid) * self.block_size
