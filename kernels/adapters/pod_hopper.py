"""Our Hopper-native POD kernel (kernels/hopper, Gluon, sm_90a) as methods.

One persistent kernel in three variants of the same device code: prefill alone, decode alone,
and POD (both pipelines in every CTA). Available only on sm_90 CUDA GPUs; elsewhere, and on
layouts the kernel does not take, ``MethodUnavailable`` says why and the portable Triton methods
(OURS_prefill, OURS_decode, POD; kernels/adapters/pod_triton.py) serve. Options from the YAML are
HopperConfig fields (kernels/hopper/plan.py): prefill_split, decode_split, block_n, stages,
decode_n, decode_stages, grid, pingpong.
"""
from __future__ import annotations

from kernels.hopper.plan import MODE_DECODE, MODE_POD, MODE_PREFILL, HopperConfig, make_plan, mode_for
from kernels.registry import Method, MethodUnavailable, register


class _Hopper(Method):
    devices = ("cuda",)
    build_group = "gluon-hopper"
    mode: str = MODE_POD

    def __init__(self, **options):
        super().__init__(**options)
        self.config = HopperConfig(**options)
        self.last_plan: dict = {}

    def unavailable_reason(self, device):
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        from kernels.hopper.launch import unavailable_reason
        return unavailable_reason(device, self.name)

    def prepare(self, batch):
        reason = self.unavailable_reason(batch.device)
        if reason:
            raise MethodUnavailable(reason)
        if self.mode != MODE_POD:
            self.require_parts(batch)
        run, plan = prepare_hopper(batch, self.mode, self.config, what=self.name)
        if run is None:
            raise MethodUnavailable(plan)
        self.last_plan = plan
        return run

    def info(self):
        """impl names the variant and plan, e.g. 'gluon hopper pod bn64x3/dn32x3 split 1/4 grid 132'."""
        p = self.last_plan
        return {"impl": impl_text(p) if p else "gluon hopper", "plan": p}


def impl_text(plan: dict) -> str:
    """The impl column of a Hopper plan dict (``HopperPlan.as_dict``)."""
    t = plan["tiles"]
    return (f"gluon hopper {t['mode']} bn{t['block_n']}x{t['stages']}/dn{t['decode_n']}x{t['decode_stages']}"
            f"{' pingpong' if t['pingpong'] else ''} split {plan['n_splits_p']}/{plan['n_splits_d']} grid {plan['grid']}")


def prepare_hopper(batch, mode: str = MODE_PREFILL, config: HopperConfig | None = None, what: str | None = None):
    """(the launch of the Hopper kernel's ``mode`` variant for ``batch``, its plan dict), or
    (None, why not, naming ``what``) when it cannot run here or on this batch (no sm_90 GPU, no
    Gluon, tiles that do not fit this head dim, a layout it does not take)."""
    from kernels.hopper.launch import HopperLaunch, LayoutUnsupported, num_sms, unavailable_reason
    what = what or f"the Hopper {mode} kernel"
    why = unavailable_reason(batch.device, what)
    if why:
        return None, why
    try:
        plan = make_plan(batch.spec, num_sms(batch.device), mode_for(batch.spec, mode), config or HopperConfig())
    except ValueError as e:   # tiles that do not fit this head dim / shared memory
        return None, f"{what}: {e}"
    try:
        return HopperLaunch(batch, plan), plan.as_dict()
    except LayoutUnsupported as e:
        return None, f"{what}: {e}"


@register
class OursPrefillHopper(_Hopper):
    """Our Hopper prefill alone (TMA, async wgmma, 2 consumer warpgroups + producer, persistent)."""
    name, parts, mode = "OURS_prefill_hopper", ("prefill",), MODE_PREFILL
    description = "Gluon sm_90a fa3-class prefill: TMA, async wgmma overlapped with softmax, setmaxnreg, persistent"


@register
class OursDecodeHopper(_Hopper):
    """Our Hopper decode alone (TMA ring fed by a producer warp, mma.sync on 16-row GQA tiles)."""
    name, parts, mode = "OURS_decode_hopper", ("decode",), MODE_DECODE
    description = "Gluon sm_90a split-KV decode: TMA ring + producer warp, 2 persistent CTAs per SM"


@register
class PODHopper(_Hopper):
    """Prefill and decode pipelines in every persistent CTA (one per SM): tensor cores and HBM busy together."""
    name, parts, mode = "POD_hopper", ("prefill", "decode"), MODE_POD
    description = "Gluon sm_90a POD: warp-specialized prefill + decode pipelines sharing each SM"
