"""The hybrid-batch workload: the tensors every method reads (model shapes and batch specs are in
kernels/shapes.py, torch-free, and re-exported here).

One ``HybridBatch`` holds one prefill chunk (batch 1, causal bottom-right) and a decode batch.
K/V live in one paged pool (page size ``page_size``) so that the same memory is seen
  * densely by FlashAttention-style methods: ``k_p`` (kv_cap_p, Hkv, d), ``k_d`` (bs, cap_d, Hkv, d)
  * paged by FlashInfer-style methods: ``k_pool`` (num_pages, page_size, Hkv, d) plus page tables.
Queries live in one tensor ``q`` (Lq + bs, H, d) whose first Lq rows are the prefill chunk, so a
batched method can take it as is; ``q_p`` and ``q_d`` are views of it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from kernels.shapes import DTYPE_ALIASES, DTYPE_BYTES, BatchSpec, ModelShape, dtype_bytes, dtype_name  # noqa: F401

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def dtype_of(name: str) -> torch.dtype:
    """torch dtype for a dtype name used in YAML ('float16', 'bfloat16', also 'fp16'/'bf16')."""
    return DTYPES[dtype_name(name)]


def _pages(n: int, page_size: int) -> int:
    return -(-n // page_size)


@dataclass
class HybridBatch:
    """Device tensors of a ``BatchSpec`` (see module docstring for the layout)."""

    spec: BatchSpec
    device: torch.device
    q: torch.Tensor                 # (Lq + bs, H, d)
    k_pool: torch.Tensor            # (num_pages, page_size, Hkv, d)
    v_pool: torch.Tensor
    decode_pages_per_req: int       # pages reserved per decode request (capacity / page_size)
    prefill_page_base: int          # first page of the prefill request's KV
    prefill_pages_cap: int          # pages reserved for the prefill KV
    extras: dict = field(default_factory=dict)  # per-batch caches methods may share (e.g. plans)

    # ----- construction -----
    @classmethod
    def allocate(cls, spec: BatchSpec, device="cuda", seed: int = 0, prefill_kv_cap: int | None = None,
                 ) -> "HybridBatch":
        """Allocate and fill with N(0,1) data. ``prefill_kv_cap`` reserves room for longer prefill
        KV so that ``with_prefill`` can reuse the storage across the chunks of one prompt."""
        device = torch.device(device)
        m, ps = spec.model, spec.page_size
        dt = dtype_of(spec.dtype)
        gen = torch.Generator(device=device).manual_seed(seed)
        lq, bs = spec.prefill_len, spec.decode_batch
        dec_pages = _pages(spec.decode_ctx, ps) if bs else 0
        cap = max(prefill_kv_cap or 0, spec.prefill_kv_len)
        pre_pages = _pages(cap, ps) if spec.has_prefill else 0
        num_pages = bs * dec_pages + pre_pages
        q = torch.randn((lq + bs, m.q_heads, m.head_dim), generator=gen, device=device, dtype=dt)
        k = torch.randn((num_pages, ps, m.kv_heads, m.head_dim), generator=gen, device=device, dtype=dt)
        v = torch.randn((num_pages, ps, m.kv_heads, m.head_dim), generator=gen, device=device, dtype=dt)
        return cls(spec, device, q, k, v, dec_pages, bs * dec_pages, pre_pages)

    def with_prefill(self, prefill_len: int, prefill_kv_len: int) -> "HybridBatch":
        """Same storage, another prefill chunk (must fit in the reserved prefill capacity)."""
        spec = self.spec.replace(prefill_len=prefill_len, prefill_kv_len=prefill_kv_len)
        if prefill_len != self.spec.prefill_len:
            raise ValueError("with_prefill keeps the chunk length; allocate a new batch for another")
        if _pages(prefill_kv_len, spec.page_size) > self.prefill_pages_cap:
            raise ValueError("prefill_kv_len exceeds the reserved prefill capacity")
        return dataclasses.replace(self, spec=spec, extras={})

    # ----- dense views -----
    @property
    def q_p(self) -> torch.Tensor:
        """(Lq, H, d) prefill queries."""
        return self.q[: self.spec.prefill_len]

    @property
    def q_d(self) -> torch.Tensor:
        """(bs, H, d) decode queries, one token per request."""
        return self.q[self.spec.prefill_len:]

    def _prefill_kv(self, pool):
        s = self.spec
        flat = pool[self.prefill_page_base: self.prefill_page_base + self.prefill_pages_cap]
        return flat.reshape(-1, s.model.kv_heads, s.model.head_dim)[: s.prefill_kv_len]

    @property
    def k_p(self) -> torch.Tensor:
        """(prefill_kv_len, Hkv, d) contiguous prefill keys."""
        return self._prefill_kv(self.k_pool)

    @property
    def v_p(self) -> torch.Tensor:
        return self._prefill_kv(self.v_pool)

    def _decode_kv(self, pool):
        s = self.spec
        flat = pool[: self.prefill_page_base]
        return flat.reshape(s.decode_batch, self.decode_pages_per_req * s.page_size, s.model.kv_heads,
                            s.model.head_dim)

    @property
    def k_d(self) -> torch.Tensor:
        """(bs, capacity >= decode_ctx, Hkv, d) contiguous decode keys; valid length ``decode_ctx``."""
        return self._decode_kv(self.k_pool)

    @property
    def v_d(self) -> torch.Tensor:
        return self._decode_kv(self.v_pool)

    @property
    def decode_seqlens(self) -> torch.Tensor:
        """(bs,) int32 valid KV length of each decode request."""
        key = "decode_seqlens"
        if key not in self.extras:
            self.extras[key] = torch.full((self.spec.decode_batch,), self.spec.decode_ctx, dtype=torch.int32,
                                          device=self.device)
        return self.extras[key]

    # ----- paged views (FlashInfer style, NHD, page tables int32) -----
    def decode_page_table(self) -> dict:
        """CSR page table of the decode requests: indptr (bs+1), indices, last_page_len (bs)."""
        s, ps = self.spec, self.spec.page_size
        used = _pages(s.decode_ctx, ps)
        idx = (torch.arange(s.decode_batch, device=self.device)[:, None] * self.decode_pages_per_req
               + torch.arange(used, device=self.device)[None, :]).reshape(-1)
        indptr = torch.arange(s.decode_batch + 1, device=self.device) * used
        last = torch.full((s.decode_batch,), s.decode_ctx - (used - 1) * ps, device=self.device)
        return {"indptr": indptr.int(), "indices": idx.int(), "last_page_len": last.int()}

    def prefill_page_table(self) -> dict:
        """CSR page table of the prefill request alone."""
        s, ps = self.spec, self.spec.page_size
        used = _pages(s.prefill_kv_len, ps)
        idx = self.prefill_page_base + torch.arange(used, device=self.device)
        return {"indptr": torch.tensor([0, used], device=self.device).int(), "indices": idx.int(),
                "last_page_len": torch.tensor([s.prefill_kv_len - (used - 1) * ps], device=self.device).int()}

    def batched_page_table(self) -> dict:
        """CSR tables of prefill + decodes as one batch (prefill first), with qo_indptr."""
        p, d = self.prefill_page_table(), self.decode_page_table()
        s = self.spec
        indptr = torch.cat([p["indptr"], d["indptr"][1:] + p["indptr"][-1]])
        qo = torch.cat([torch.tensor([0, s.prefill_len], device=self.device),
                        s.prefill_len + torch.arange(1, s.decode_batch + 1, device=self.device)]).int()
        return {"qo_indptr": qo, "indptr": indptr.int(), "indices": torch.cat([p["indices"], d["indices"]]),
                "last_page_len": torch.cat([p["last_page_len"], d["last_page_len"]])}

    def decode_block_table(self) -> torch.Tensor:
        """(bs, pages_per_req) int32 block table of the decode requests into ``k_pool``."""
        s = self.spec
        return (torch.arange(s.decode_batch, device=self.device)[:, None] * self.decode_pages_per_req
                + torch.arange(self.decode_pages_per_req, device=self.device)[None, :]).int()

    def prefill_block_table(self) -> torch.Tensor:
        """(1, pages) int32 block table of the prefill request into ``k_pool``."""
        return (self.prefill_page_base + torch.arange(self.prefill_pages_cap, device=self.device))[None].int()
