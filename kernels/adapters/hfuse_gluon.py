"""HFuse as a method: HFuse-style warp-parallel fusion of prefill and decode attention, in Gluon.

The paper's strongest baseline (FA_HFuse): one CTA whose first 4 warps run a prefill tile and
whose other 4 warps run a decode tile, each warp group synchronising on its own named barrier
(``bar.sync id, 128``) with the shared memory split between them, grid = max(prefill CTAs, decode
CTAs). Triton cannot give different warps of a CTA different code, so this is written in Triton's
Gluon, whose ``warp_specialize`` does (default partition = prefill, one worker partition = decode)
and lowers each partition's barriers to named barriers. Gluon's warp specialisation needs sm_90+.

Options (YAML) are HFuseConfig fields (kernels/hfuse/plan.py): ctas_per_sm (1 default: the
original's 128x64 prefill tile, one 8-warp CTA per SM; 2: smaller tiles, two CTAs per SM),
prefill_split / decode_split ('auto' = FlashDecoding heuristic over the SM count, or an int),
block_m, block_n, decode_n, prefill_stages, decode_stages, decode_regs, maxnreg.
"""
from __future__ import annotations

from kernels.hfuse.launch import num_sms, prepare_launch, unavailable_reason
from kernels.hfuse.plan import HFuseConfig, make_plan
from kernels.registry import Method, MethodUnavailable, register


@register
class HFuse(Method):
    """Prefill (warps 0-3) and decode (warps 4-7) in every CTA, named barriers per group (Gluon)."""

    name = "HFuse"
    parts = ("prefill", "decode")
    devices = ("cuda",)
    build_group = "gluon-hfuse"
    description = "HFuse-style warp-parallel fused prefill+decode attention (Gluon warp_specialize, mma.sync)"

    def __init__(self, **options):
        super().__init__(**options)
        self.config = HFuseConfig(**options)
        self.last_plan: dict = {}

    def unavailable_reason(self, device):
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        return unavailable_reason(device)

    def prepare(self, batch):
        reason = self.unavailable_reason(batch.device)
        if reason:
            raise MethodUnavailable(reason)
        plan = make_plan(batch.spec, num_sms(batch.device), self.config)
        self.last_plan = plan.as_dict()
        return prepare_launch(batch, plan)

    def info(self):
        """impl names tiles and splits of the last prepared batch, e.g.
        'gluon hfuse cps1 prefill 128x64/2st decode 16x64/3st split 1/4 grid 320'."""
        p = self.last_plan
        if not p:
            return {"impl": "gluon hfuse", "plan": p}
        t = p["tiles"]
        impl = (f"gluon hfuse cps{t['ctas_per_sm']} prefill {t['block_m']}x{t['block_n']}/{t['prefill_stages']}st "
                f"decode {t['decode_rows']}x{t['decode_n']}/{t['decode_stages']}st "
                f"split {p['n_splits_p']}/{p['n_splits_d']} grid {p['grid']}")
        return {"impl": impl, "plan": p}
