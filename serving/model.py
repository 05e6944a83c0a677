"""The Llama architecture with random weights (the artifact used dummy weights too).

Shapes per model follow the public configs (Yi-6B is Llama-shaped). Linear layers are fused as in
production engines: one QKV projection and one gate/up projection per layer. Weights are uniform in
[-init_range, init_range] (the artifact's dummy weights: 1e-3). The forward pass is a function of
the token batch, the KV cache and an attention backend (serving/backends.py); logits are computed
only for rows that sample a token, and sampling is greedy.

Tensor parallelism (serving/tensor_parallel.py): with ``tp > 1`` the model object is one rank's
shard. Every full weight is still generated in TP1's order from the same seed and then sliced, so
the shards of any tp make up the same model: rank r keeps q/kv heads [r*H/tp, (r+1)*H/tp) of the
fused QKV (column-parallel by heads) with the matching input columns of o_proj (row-parallel), and
the matching rows of gate/up (column-parallel) with the input columns of down (row-parallel); the
outputs of o_proj and down are summed over ranks by ``all_reduce``. Embeddings, norms and lm_head
are replicated.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .ops import make_ops


@dataclass(frozen=True)
class LlamaConfig:
    name: str
    vocab_size: int
    hidden: int
    intermediate: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int = 128
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-5

    def __post_init__(self):
        if self.q_heads % self.kv_heads:
            raise ValueError("q_heads must be a multiple of kv_heads")

    @property
    def qkv_dim(self) -> int:
        return (self.q_heads + 2 * self.kv_heads) * self.head_dim

    def param_count(self) -> int:
        h, i = self.hidden, self.intermediate
        per_layer = h * self.qkv_dim + self.q_heads * self.head_dim * h + 2 * i * h + i * h + 2 * h
        return self.layers * per_layer + 2 * self.vocab_size * h + h

    def kv_bytes_per_token(self, elem_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * elem_bytes


def shard_config(cfg: LlamaConfig, tp: int) -> LlamaConfig:
    """One rank's share of ``cfg`` at tensor parallelism ``tp``: q/kv heads and the MLP's
    intermediate size divided by ``tp`` (hidden, vocab, layers unchanged). What a rank's KV cache
    and attention backend see. Raises ValueError naming ``tp`` if it does not divide them."""
    tp = int(tp)
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if tp == 1:
        return cfg
    bad = [f"{n}={v}" for n, v in (("q_heads", cfg.q_heads), ("kv_heads", cfg.kv_heads),
                                    ("intermediate", cfg.intermediate)) if v % tp]
    if bad:
        # (vLLM replicates KV heads when tp > kv_heads; not done here)
        raise ValueError(f"tp={tp} does not divide {cfg.name}'s {', '.join(bad)}: each rank must own whole heads")
    return replace(cfg, q_heads=cfg.q_heads // tp, kv_heads=cfg.kv_heads // tp, intermediate=cfg.intermediate // tp)


MODELS = {
    # hidden, intermediate, layers, q/kv heads, vocab and rope theta of the public configs
    "llama-3-8b": LlamaConfig("llama-3-8b", 128_256, 4096, 14_336, 32, 32, 8, 128, 500_000.0),
    "llama-2-7b": LlamaConfig("llama-2-7b", 32_000, 4096, 11_008, 32, 32, 32, 128, 10_000.0),
    "yi-6b": LlamaConfig("yi-6b", 64_000, 4096, 11_008, 32, 32, 4, 128, 5_000_000.0),
    # CPU tests and smoke runs (head_dim 64: the smallest our Triton POD kernel takes)
    "tiny": LlamaConfig("tiny", 256, 128, 256, 2, 4, 2, 64, 10_000.0),
}


def model_config(name_or_dict) -> LlamaConfig:
    if isinstance(name_or_dict, dict):
        return LlamaConfig(**name_or_dict)
    if name_or_dict not in MODELS:
        raise KeyError(f"unknown model {name_or_dict!r}; known: {', '.join(MODELS)}")
    return MODELS[name_or_dict]


class LlamaModel:
    """Weights and forward pass. ``forward`` takes the iteration's metadata (serving/engine.py)."""

    def __init__(self, cfg: LlamaConfig, device="cpu", dtype=torch.float16, seed: int = 0,
                 init_range: float = 1e-3, ops: str = "auto", tp: int = 1, rank: int = 0):
        """``tp``/``rank``: keep only rank ``rank``'s shard of the full model (module docstring);
        ``self.local`` is the per-rank config (``cfg`` itself at tp=1). Set ``all_reduce`` (an
        in-place sum over ranks) before running a forward at tp > 1."""
        if not 0 <= rank < tp:
            raise ValueError(f"rank {rank} outside tp={tp}")
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.tp, self.rank = int(tp), int(rank)
        self.local = shard_config(cfg, tp)
        self.all_reduce = None
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def w(*shape):
            t = torch.empty(shape, device=self.device, dtype=dtype)
            return t.uniform_(-init_range, init_range, generator=gen)

        h, d, H, Hkv, I = cfg.hidden, cfg.head_dim, cfg.q_heads, cfg.kv_heads, cfg.intermediate
        loc = self.local

        def rows(t, *ranges):
            """Rank ``rank``'s share of each (start, size) row range of ``t``, concatenated; the full
            tensor is freed at once (peak memory: one full layer weight beside the shards)."""
            if self.tp == 1:
                return t
            return torch.cat([t[s + self.rank * n: s + (self.rank + 1) * n] for s, n in ranges]).contiguous()

        def cols(t, size):
            return t if self.tp == 1 else t[:, self.rank * size:(self.rank + 1) * size].contiguous()

        # the generator is drawn in TP1's order and amounts at every tp (the same full model)
        self.embed = w(cfg.vocab_size, h)
        self.layers = []
        for _ in range(cfg.layers):
            qkv = rows(w(cfg.qkv_dim, h), (0, loc.q_heads * d), (H * d, loc.kv_heads * d),
                       ((H + Hkv) * d, loc.kv_heads * d))
            o = cols(w(h, H * d), loc.q_heads * d)
            gate_up = rows(w(2 * I, h), (0, loc.intermediate), (I, loc.intermediate))
            down = cols(w(h, I), loc.intermediate)
            self.layers.append({
                "in_norm": torch.ones(h, device=self.device, dtype=dtype), "qkv": qkv, "o": o,
                "post_norm": torch.ones(h, device=self.device, dtype=dtype), "gate_up": gate_up, "down": down})
        self.final_norm = torch.ones(h, device=self.device, dtype=dtype)
        self.lm_head = w(cfg.vocab_size, h)
        self.ops = make_ops(self.device, cfg.rope_theta, d, cfg.rms_eps, prefer=ops)

    @property
    def impl(self) -> str:
        return self.ops.impl

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp > 1:
            if self.all_reduce is None:
                raise RuntimeError("a tensor-parallel shard needs all_reduce set (serving/tensor_parallel.py)")
            self.all_reduce(x)
        return x

    def forward(self, meta, cache, backend, timer=None, logits: bool = True) -> torch.Tensor | None:
        """Run one iteration; returns the logits of the sampling rows (S, vocab). ``timer``, if
        given, goes to the backend, which marks its attention kernels with it (the figure-4 breakdown).
        ``logits=False`` (tensor-parallel ranks other than 0, which sample nothing) stops after the
        last layer and returns None."""
        cfg, ops = self.cfg, self.ops
        T, H, Hkv, d = meta.num_tokens, self.local.q_heads, self.local.kv_heads, cfg.head_dim
        x = F.embedding(meta.input_ids, self.embed)
        residual = None
        for li, L in enumerate(self.layers):
            if residual is None:
                residual, h = x, ops.rmsnorm(x, L["in_norm"])
            else:
                h, residual = ops.add_rmsnorm(x, residual, L["in_norm"])
            qkv = F.linear(h, L["qkv"])
            q = qkv[:, : H * d].view(T, H, d)
            k = qkv[:, H * d: (H + Hkv) * d].view(T, Hkv, d)
            v = qkv[:, (H + Hkv) * d:].view(T, Hkv, d)
            # contiguous copies of the rotated q, k (the fused kernels write in place)
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            ops.rope_(q, k, meta.positions)
            cache.write(li, k, v, meta.slots)
            o = backend.forward(li, q, meta, timer)
            x = self._reduce(F.linear(o.reshape(T, H * d), L["o"]))      # row-parallel: partial sums
            h, residual = ops.add_rmsnorm(x, residual, L["post_norm"])
            x = self._reduce(F.linear(ops.silu_mul(F.linear(h, L["gate_up"])), L["down"]))
        if not logits:
            return None
        h, _ = ops.add_rmsnorm(x, residual, self.final_norm)
        if meta.sample_rows.numel() == 0:
            return h.new_empty((0, cfg.vocab_size))
        return F.linear(h.index_select(0, meta.sample_rows), self.lm_head)
