"""FlashAttention-2 baselines: FA_prefill, FA_decode, FA_BackToBack and FA_Streams.

They read the dense views of a hybrid batch (``q_p``/``k_p``/``v_p`` and ``q_d``/``k_d``/``v_d``),
as the original artifact called FlashAttention on contiguous NHD tensors. The kernel library is
chosen once per device type and recorded in ``info()["impl"]``:

1. flash-attn's ``flash_attn_with_kvcache`` (``cache_seqlens``, ``num_splits=0``: its own split-KV
   heuristic) when the ``flash_attn`` package imports;
2. else PyTorch's built-in FlashAttention-2, ``torch.ops.aten._flash_attention_forward`` (dense
   path: bottom-right causal when q is shorter than k, GQA, split-KV heuristic for decode);
3. on CPU (smoke runs) ``torch.nn.functional.scaled_dot_product_attention`` computing the same
   function, impl ``torch_sdpa_cpu``.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import Method, MethodUnavailable, Outputs, register
from ..workload import HybridBatch

Kernel = Callable[[], torch.Tensor]


class _FlashAttnKVCache:
    """flash-attn's flash_attn_with_kvcache on the dense caches."""

    def __init__(self, fn, version: str):
        self._fn = fn
        self.impl = f"flash_attn_with_kvcache (flash-attn {version})"

    def prefill(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        q, k, v = batch.q_p.unsqueeze(0), batch.k_p.unsqueeze(0), batch.v_p.unsqueeze(0)
        seqlens = torch.full((1,), s.prefill_kv_len, dtype=torch.int32, device=batch.device)
        fn, scale, causal = self._fn, s.sm_scale, s.causal
        return lambda: fn(q, k, v, cache_seqlens=seqlens, softmax_scale=scale, causal=causal, num_splits=0)[0]

    def decode(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        q, k, v, seqlens = batch.q_d.unsqueeze(1), batch.k_d, batch.v_d, batch.decode_seqlens
        fn, scale = self._fn, s.sm_scale
        return lambda: fn(q, k, v, cache_seqlens=seqlens, softmax_scale=scale, causal=True, num_splits=0)[:, 0]


class _TorchFlash:
    """PyTorch's FlashAttention-2 (aten._flash_attention_forward, dense 4-D path)."""

    impl = f"aten._flash_attention_forward (torch {torch.__version__})"

    @staticmethod
    def _call(q, k, v, causal: bool, scale: float) -> torch.Tensor:
        # Dense path: cum_seq_q/cum_seq_k None, max_q/max_k are read from the shapes. The kernel
        # needs only a unit stride in the last dimension, so sliced caches go in without a copy.
        return torch.ops.aten._flash_attention_forward(
            q, k, v, None, None, q.shape[1], k.shape[1], 0.0, causal, False, scale=scale)[0]

    def prefill(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        q, k, v = batch.q_p.unsqueeze(0), batch.k_p.unsqueeze(0), batch.v_p.unsqueeze(0)
        call, scale, causal = self._call, s.sm_scale, s.causal
        return lambda: call(q, k, v, causal, scale)[0]

    def decode(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        # All decodes share one length, so slicing the cache to it is exact.
        q = batch.q_d.unsqueeze(1)
        k, v = batch.k_d[:, : s.decode_ctx], batch.v_d[:, : s.decode_ctx]
        call, scale = self._call, s.sm_scale
        return lambda: call(q, k, v, False, scale)[:, 0]


class _SdpaCpu:
    """CPU stand-in for smoke runs: SDPA with an explicit bottom-right causal mask."""

    impl = "torch_sdpa_cpu"

    def prefill(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        lq, lk = s.prefill_len, s.prefill_kv_len
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (batch.q_p, batch.k_p, batch.v_p))
        # SDPA's is_causal is top-left aligned; the chunk's queries are the last lq keys.
        mask = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq) if s.causal else None
        scale = s.sm_scale
        return lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)[0].transpose(0, 1).contiguous()

    def decode(self, batch: HybridBatch) -> Kernel:
        s = batch.spec
        q = batch.q_d.unsqueeze(2)
        k, v = (t[:, : s.decode_ctx].transpose(1, 2) for t in (batch.k_d, batch.v_d))
        scale = s.sm_scale
        return lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)[:, :, 0].contiguous()


@functools.cache
def _backend(device_type: str):
    """The kernel library for ``device_type``, or a string saying why there is none."""
    if device_type == "cpu":
        return _SdpaCpu()
    if device_type != "cuda":
        return f"no FlashAttention backend for device type {device_type}"
    try:
        import flash_attn
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        pass
    else:
        return _FlashAttnKVCache(flash_attn_with_kvcache, getattr(flash_attn, "__version__", "unknown"))
    if torch.backends.cuda.is_flash_attention_available():
        return _TorchFlash()
    return ("neither flash-attn (pip install flash-attn) nor a PyTorch build with FlashAttention "
            "(torch.backends.cuda.is_flash_attention_available()) is available")


class _FlashAttention(Method):
    """Shared backend choice and checks of the FA_* methods."""

    devices = ("cuda", "cpu")

    def __init__(self, **options):
        super().__init__(**options)
        self._impl = None

    def unavailable_reason(self, device: torch.device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if device.type == "cuda":
            if torch.cuda.get_device_capability(device)[0] < 8:
                return f"{self.name} needs FlashAttention-2, which needs an sm_80 or newer GPU"
        backend = _backend(device.type)
        return backend if isinstance(backend, str) else None

    def _kernels(self, batch: HybridBatch):
        """(prefill kernel or None, decode kernel or None) for the parts of this method."""
        reason = self.unavailable_reason(batch.device)
        if reason:
            raise MethodUnavailable(reason)
        self.require_parts(batch)
        backend = _backend(batch.device.type)
        if batch.device.type == "cuda" and batch.q.dtype not in (torch.float16, torch.bfloat16):
            raise MethodUnavailable(f"FlashAttention-2 needs float16 or bfloat16, not {batch.spec.dtype}")
        self._impl = backend.impl
        pre = backend.prefill(batch) if "prefill" in self.parts else None
        dec = backend.decode(batch) if "decode" in self.parts else None
        return pre, dec

    def info(self) -> dict:
        return {"impl": self._impl or self.name}


@register
class FAPrefill(_FlashAttention):
    name = "FA_prefill"
    parts = ("prefill",)
    description = "FlashAttention-2 causal (bottom-right) prefill chunk over its KV prefix"

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        pre, _ = self._kernels(batch)
        return lambda: {"prefill": pre()}


@register
class FADecode(_FlashAttention):
    name = "FA_decode"
    parts = ("decode",)
    description = "FlashAttention-2 batched one-token decode over dense KV caches"

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        _, dec = self._kernels(batch)
        return lambda: {"decode": dec()}


@register
class FABackToBack(_FlashAttention):
    name = "FA_BackToBack"
    parts = ("prefill", "decode")
    description = "FlashAttention-2 prefill then decode, one after the other on one stream"

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        pre, dec = self._kernels(batch)
        return lambda: {"prefill": pre(), "decode": dec()}


@register
class FAStreams(_FlashAttention):
    name = "FA_Streams"
    parts = ("prefill", "decode")
    devices = ("cuda",)
    description = "FlashAttention-2 prefill and decode on two CUDA streams, joined with events"

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"{self.name} overlaps two CUDA streams and so needs a CUDA GPU, not {device.type}"
        return super().unavailable_reason(device)

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        pre, dec = self._kernels(batch)
        dev = batch.device
        s_p, s_d = torch.cuda.Stream(dev), torch.cuda.Stream(dev)
        start, done_p, done_d = (torch.cuda.Event() for _ in range(3))

        def run() -> Outputs:
            caller = torch.cuda.current_stream(dev)
            # Both side streams start after whatever the caller enqueued (inputs, timing event).
            start.record(caller)
            s_p.wait_event(start)
            s_d.wait_event(start)
            with torch.cuda.stream(s_p):
                out_p = pre()
                done_p.record(s_p)
            with torch.cuda.stream(s_d):
                out_d = dec()
                done_d.record(s_d)
            caller.wait_event(done_p)
            caller.wait_event(done_d)
            # The outputs were allocated on the side streams but are consumed (and freed) on the
            # caller's stream: tell the caching allocator, or it may reuse them too early.
            out_p.record_stream(caller)
            out_d.record_stream(caller)
            return {"prefill": out_p, "decode": out_d}

        return run
