"""Test-only methods (registered on import; use with ``--import-module tests.fake_methods``)."""
from __future__ import annotations

import time

import torch

from kernels.reference import reference_attention
from kernels.registry import Method, MethodUnavailable, register
from kernels.workload import dtype_of


def _attention_in_dtype(batch) -> dict:
    """Correct outputs rounded to the input dtype, like a real kernel's."""
    s, dt = batch.spec, dtype_of(batch.spec.dtype)
    out = {}
    if s.has_prefill:
        out["prefill"] = reference_attention(batch.q_p[None], batch.k_p[None], batch.v_p[None], [s.prefill_kv_len],
                                             causal=s.causal, sm_scale=s.sm_scale)[0].to(dt)
    if s.has_decode:
        out["decode"] = reference_attention(batch.q_d[:, None], batch.k_d, batch.v_d, batch.decode_seqlens,
                                            sm_scale=s.sm_scale)[:, 0].to(dt)
    return out


class _Fake(Method):
    devices = ("cpu", "cuda")


@register
class FakeCorrect(_Fake):
    name = "TEST_correct"

    def prepare(self, batch):
        sleep_s = float(self.options.get("sleep_s", 0))

        def fn():
            if sleep_s:
                time.sleep(sleep_s)
            return _attention_in_dtype(batch)
        return fn

    def info(self):
        return {"impl": "torch-reference"}


@register
class FakeWrong(_Fake):
    name = "TEST_wrong"

    def prepare(self, batch):
        def fn():
            out = _attention_in_dtype(batch)
            return {k: v * 1.1 for k, v in out.items()}
        return fn


@register
class FakeDecodeOnly(_Fake):
    name = "TEST_decode_only"
    parts = ("decode",)

    def prepare(self, batch):
        return lambda: {"decode": _attention_in_dtype(batch)["decode"]}


@register
class FakeCudaOnly(Method):
    name = "TEST_cuda_only"
    devices = ("cuda",)

    def prepare(self, batch):
        return lambda: _attention_in_dtype(batch)


@register
class FakeUnavailableShape(_Fake):
    name = "TEST_unavailable_shape"

    def prepare(self, batch):
        raise MethodUnavailable("no kernel for this shape")


@register
class FakeCrash(_Fake):
    name = "TEST_crash"

    def prepare(self, batch):
        def fn():
            raise RuntimeError("boom\nsecond line")
        return fn
