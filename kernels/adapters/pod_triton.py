"""Our Triton kernel family as methods: the parts alone, serial, two streams, CTA-parallel, POD.

All six run the same prefill and decode device functions (kernels/pod/kernel.py); they differ only
in how CTAs find their work. Options from the YAML are PodConfig fields (kernels/pod/plan.py).
``POD`` with ``ctas_per_sm: auto`` runs serial (exactly OURS_Serial's two launches) or fused with 2
or 4 CTAs per SM. Under the default ``plan: measured`` the three are timed on the GPU at hand the
first time a batch shape is prepared and the fastest is kept for that shape (``plan_key``), as
Triton's autotuner does; ``plan: model`` asks the device's calibrated cost model
(kernels/pod/calibration.py) instead; ``plan: thresholds`` (the former H100-fit rule) always fuses.
``impl`` says which ran and why (the times, or the predictions and the calibration used).
The serial path's prefill (OURS_prefill, OURS_Serial, OURS_Streams, POD's serial candidate) is the
Gluon Hopper prefill (kernels/hopper) where it runs, under ``prefill_kernel: auto``; ``impl`` then
names it ("gluon hopper prefill ...").
"""
from __future__ import annotations

from dataclasses import asdict, replace

import torch

from kernels.pod.launch import (MODE_CTA, MODE_DECODE, MODE_POD, MODE_PREFILL, interpreting, num_sms,
                                prepare_launch, prepare_serial, smem_per_block, tma_capable)
from kernels.pod.plan import (BINDINGS, ExecutionChoice, PodConfig, choose_execution, decode_split_candidates,
                              make_plan, measured_choice, plan_key)
from kernels.adapters.pod_hopper import impl_text, prepare_hopper
from kernels.registry import Method, MethodUnavailable, register

HOPPER = "gluon-hopper"   # a plan dict's "kernel" when a launch of the Gluon Hopper kernel (kernels/hopper) runs it


class _TritonPod(Method):
    devices = ("cuda", "cpu")
    build_group = "triton-pod"
    mode: int = MODE_POD   # how one fused launch finds its work (ignored when ``serial``)
    serial = False         # two launches: prefill alone, then decode alone
    streams = False        # with ``serial``: the two launches on two CUDA streams

    def __init__(self, **options):
        super().__init__(**options)
        self.config = PodConfig(**options)
        self.last_plan: dict = {}
        # the cost model's parameters; None: kernels.pod.calibration.for_device at prepare time
        self.calibration = None
        # plan "measured": the decision per plan_key, and how the candidates are timed
        # ({name: fn}, device) -> {name: ms}
        self.measured: dict = {}
        self.measure = _median_ms_each
        # decode_split "measured": how the split counts are timed; off a GPU (the interpreter's times
        # say nothing of one) the heuristic's count runs unless a timer is given (tests)
        self.measure_split = None

    def unavailable_reason(self, device):
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if device.type == "cpu" and not interpreting():
            return "on the CPU our Triton kernels need the interpreter: set TRITON_INTERPRET=1 before importing triton"
        if self.config.prefill_loads == "tma" and device.type == "cuda" and not tma_capable(device):
            return "prefill_loads 'tma' needs the tensor copy engine of sm_90+ (Hopper); use 'pointer'"
        return None

    def _uses_model(self) -> bool:
        return self.config.ctas_per_sm == "auto" and self.config.plan == "model"

    def needs_calibration(self) -> bool:
        """True when this method's plan asks the device's cost model (the build step calibrates first)."""
        return not self.serial and self.mode in (MODE_CTA, MODE_POD) and self._uses_model()

    def _calibration(self, device):
        """The cost model's calibration, loaded (or measured) only when the plan asks the model."""
        if not self._uses_model():
            return None
        if self.calibration is None:
            from kernels.pod.calibration import for_device
            return for_device(device)
        return self.calibration

    def _plan(self, batch, mode, kind=None, config=None):
        config = config or self.config
        cal = self._calibration(batch.device) if mode not in (MODE_PREFILL, MODE_DECODE) else None
        plan = make_plan(batch.spec, mode, num_sms(batch.device), config, kind, calibration=cal,
                         smem_limit=smem_per_block(batch.device))
        if mode == MODE_DECODE and config.decode_split == "measured":
            plan = self._measured_decode_split(batch, plan, config, kind)
        return plan

    def _measured_decode_split(self, batch, plan, config, kind):
        """``plan`` (a decode-alone launch of ``config``) with the split count that ran fastest on
        this device the first time its decode part (key: tiles, layout, decode lengths) was prepared;
        the candidates are decode_split_candidates', timed together with ``self.measure_split``. The
        decision is shared by every method of this family in the process, so OURS_decode, OURS_Serial
        and POD's serial candidate run the same decode launch."""
        candidates = decode_split_candidates(batch.spec, plan)
        measure = self.measure_split or (_median_ms_each if batch.device.type == "cuda" else None)
        if len(candidates) == 1 or measure is None:
            return plan

        def plan_with(splits):
            return self._plan(batch, MODE_DECODE, kind, replace(config, decode_split=splits))

        spec, paged = batch.spec, config.kv_layout == "paged"
        lengths = plan_key(spec, config.plan_key)[-2:]
        key = (str(batch.device), plan.tiles, paged, spec.model.q_heads, spec.model.kv_heads, spec.model.head_dim,
               str(spec.dtype), spec.page_size, *lengths)
        if key not in DECODE_SPLITS:
            runs = {s: prepare_launch(batch, plan_with(s), paged) for s in candidates}
            times = {s: float(ms) for s, ms in measure(runs, batch.device).items()}
            DECODE_SPLITS[key] = (min(times, key=times.get), times)
        best, times = DECODE_SPLITS[key]
        out = plan_with(best)
        out.notes["decode_split_ms"] = {str(s): round(t, 5) for s, t in times.items()}
        return out

    def _hopper_prefill(self, batch):
        """(launch, plan dict) of the Gluon Hopper prefill when ``prefill_kernel`` asks for it and it
        runs on this batch here, else None (``auto``: the Triton prefill serves, as it does when an
        option of the Triton launches is set)."""
        want = self.config.prefill_kernel
        if want == "triton" or not batch.spec.has_prefill or (want == "auto" and self.config.tuned_options()):
            return None
        run, plan = prepare_hopper(batch, "prefill")
        if run is None:
            if want == "hopper":
                raise MethodUnavailable(f"{self.name}: prefill_kernel 'hopper': {plan}")
            return None
        return run, {"kernel": HOPPER, **plan}

    def _prepare_serial(self, batch, paged, **record):
        """Our prefill launch then our decode launch (OURS_Serial's), on two streams if ``streams``."""
        plan_d = self._plan(batch, MODE_DECODE)
        hopper = self._hopper_prefill(batch)
        if hopper:
            run_p, plan_p = hopper
            self.last_plan = {"prefill": plan_p, "decode": plan_d.as_dict(), **record}
            return prepare_serial(batch, None, plan_d, paged, streams=self.streams, run_p=run_p)
        plan_p = self._plan(batch, MODE_PREFILL)
        self.last_plan = {"prefill": plan_p.as_dict(), "decode": plan_d.as_dict(), **record}
        return prepare_serial(batch, plan_p, plan_d, paged, streams=self.streams)

    def prepare(self, batch):
        paged = self.config.kv_layout == "paged"
        if self.serial:
            return self._prepare_serial(batch, paged)
        if self.mode == MODE_PREFILL:
            hopper = self._hopper_prefill(batch)
            if hopper:
                run, self.last_plan = hopper
                return run
        if self.mode != MODE_POD:
            plan = self._plan(batch, self.mode)
            self.last_plan = plan.as_dict()
            return prepare_launch(batch, plan, paged)
        if self.config.ctas_per_sm == "auto" and self.config.plan == "measured":
            choice, fresh = self._measured_choice(batch, paged)
            if fresh is not None:     # this batch's candidates were just prepared: run the winner's
                runs, plans = fresh
                name = choice.kind if choice.kind != "fused" else f"fused{choice.ctas_per_sm}"
                self.last_plan = {**plans[name], "choice": asdict(choice)}
                return runs[name]
        else:
            choice = choose_execution(batch.spec, self.config, self._calibration(batch.device))
        if choice.kind == "serial":
            return self._prepare_serial(batch, paged, choice=asdict(choice))
        if choice.kind == "hopper":
            run, plan = prepare_hopper(batch, "pod")
            if run is None:
                raise MethodUnavailable(f"{self.name}: the measured plan chose the Hopper kernel, which cannot run "
                                        f"this batch: {plan}")
            self.last_plan = {"kernel": HOPPER, **plan, "choice": asdict(choice)}
            return run
        plan = self._plan(batch, MODE_POD, config=replace(self.config, ctas_per_sm=choice.ctas_per_sm))
        self.last_plan = {**plan.as_dict(), "choice": asdict(choice)}
        return prepare_launch(batch, plan, paged)

    def _measured_choice(self, batch, paged):
        """Serial, fused 2 or 4 CTAs/SM, or (``hopper_fused``, where it runs) the fused Gluon Hopper
        kernel, whichever ran fastest on this device the first time a batch of this key was
        prepared (the candidates timed together with ``self.measure``).
        Returns (choice, None), or on that first time (choice, (the candidates' callables, their
        plan dicts)) so that the winner is not prepared twice."""
        key = plan_key(batch.spec, self.config.plan_key)
        if key in self.measured:
            return self.measured[key], None
        runs = {"serial": self._prepare_serial(batch, paged)}
        plans = {"serial": dict(self.last_plan)}
        for cps in (2, 4):
            plan = self._plan(batch, MODE_POD, config=replace(self.config, ctas_per_sm=cps))
            runs[f"fused{cps}"] = prepare_launch(batch, plan, paged)
            plans[f"fused{cps}"] = plan.as_dict()
        if (self.config.hopper_fused and not self.config.tuned_options() and batch.spec.has_prefill
                and batch.spec.has_decode):
            run, plan = prepare_hopper(batch, "pod")
            if run is not None:   # elsewhere (no sm_90, a layout it does not take) not a candidate
                runs["hopper"], plans["hopper"] = run, {"kernel": HOPPER, **plan}
        times = {name: float(ms) for name, ms in self.measure(runs, batch.device).items()}
        rejected = disagreeing_candidates(runs, batch.spec.dtype)
        self.measured[key] = measured_choice(times, self.config.fuse_margin, "/".join(map(str, key)), rejected)
        return self.measured[key], (runs, plans)

    def cta_timeline(self, batch, warmup: int = 2):
        """Run this method's fused launch ``warmup`` times untraced, then once recording each CTA's
        (op, logical CTA, SM, start ns, end ns). Returns (plan dict, trace as a CPU int64 tensor,
        outputs of the traced launch)."""
        if self.serial:
            raise MethodUnavailable(f"{self.name} runs two launches; a CTA timeline is for one fused launch")
        plan = self._plan(batch, self.mode)
        self.last_plan = plan.as_dict()
        paged = self.config.kv_layout == "paged"
        n = plan.n_prefill_ctas + plan.n_decode_ctas
        if self.mode == MODE_PREFILL:
            n = plan.n_prefill_ctas
        elif self.mode == MODE_DECODE:
            n = plan.n_decode_ctas
        trace = torch.full((n, 5), -1, dtype=torch.int64, device=batch.device)
        run = prepare_launch(batch, plan, paged, trace=trace)
        for _ in range(warmup):
            run()
        out = run()
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        return self.last_plan, trace.cpu(), out

    def info(self):
        """impl names the plan of the last prepared batch, e.g. 'triton cps2 split 1/1 V2 ratio 1:1'."""
        p = self.last_plan
        choice = ExecutionChoice(**p["choice"]) if p and p.get("choice") else None
        why = f" ({choice.describe()})" if choice and choice.rule != "fixed" else ""
        if p.get("kernel") == HOPPER:
            return {"impl": impl_text(p) + why, "plan": p}
        decode = _decode_split_text(p.get("decode", {}))
        if p.get("prefill", {}).get("kernel") == HOPPER:
            return {"impl": f"serial {impl_text(p['prefill'])} + triton decode{decode}{why}", "plan": p}
        if not p or "mode" not in p:
            tma = " tma" if p.get("prefill", {}).get("prefill_tma") else ""
            return {"impl": ("triton serial" if choice else "triton") + tma + (f"; decode{decode}" if decode else "") + why,
                    "plan": p}
        t = p["tiles"]
        impl = (f"triton cps{p['ctas_per_sm']} tiles {t['block_m']}x{t['block_n']}/{t['decode_rows']}x{t['decode_n']} "
                f"split {p['n_splits_p']}/{p['n_splits_d']} V{t['virtual']} ratio {p['prefill_ratio']}:{p['decode_ratio']}"
                f"{(' ' + BINDINGS[p['binding']]) if p.get('binding') else ''}{' tma' if p.get('prefill_tma') else ''}"
                f"{' ds' + str(t['decode_stages']) if t.get('decode_stages') else ''}{_decode_split_text(p, False)}{why}")
        return {"impl": impl, "plan": p}


def _decode_split_text(plan: dict, with_count: bool = True) -> str:
    """' split 4 (measured of 1,2,3,4,6,8)' for a decode plan whose split was timed (without the
    count: ' (decode split measured of ...)'), else ''."""
    times = plan.get("notes", {}).get("decode_split_ms")
    if not times:
        return ""
    if with_count:
        return f" split {plan['n_splits_d']} (measured of {','.join(times)})"
    return f" (decode split measured of {','.join(times)})"


def disagreeing_candidates(runs: dict, dtype: str) -> dict:
    """{name: relative difference} of the candidates whose outputs differ from the serial
    candidate's by more than twice the dtype's tolerance against the reference (or are not
    finite): a launch that is fast because it computes something else is never chosen."""
    from kernels.reference import check_outputs, tolerance

    serial = {part: out.float() for part, out in runs["serial"]().items()}
    bad = {}
    for name, run in runs.items():
        if name == "serial":
            continue
        chk = check_outputs(run(), serial, dtype, tol=2 * tolerance(dtype))
        if not chk.ok:
            bad[name] = chk.rel_err if chk.rel_err == chk.rel_err else float("inf")   # NaN: not finite
    return bad


# decode_split "measured": (device, tiles, layout, decode shape) -> (split count, {split: ms})
DECODE_SPLITS: dict = {}


def _median_ms_each(fns: dict, device) -> dict:
    """The plan candidates' times: the harness's one timing utility, briefly (a plan is measured
    once per key; under the CPU interpreter once, only so that the code path runs), the candidates'
    samples taken in turn: timed one after the other, a candidate timed later ran up to 13% slower
    than the same launch timed first on the H200's largest figure-11 batches (analysis/measured_plan.py)."""
    from experiments.timing import time_interleaved   # the harness's timer; imported late: kernels stay importable alone

    # queue_ahead: without it a serial candidate pays two host launches inside its span, a fused one
    on_gpu = device.type == "cuda"
    kw = dict(warmup=1, repeats=3, calls=3, queue_ahead=True) if on_gpu else dict(warmup=0, repeats=1, calls=1)
    return {name: t.median_ms for name, t in time_interleaved(fns, device, **kw).items()}


@register
class OursPrefill(_TritonPod):
    """Our prefill tile alone (its best standalone tiles)."""
    name, parts, mode = "OURS_prefill", ("prefill",), MODE_PREFILL


@register
class OursDecode(_TritonPod):
    """Our decode tile alone."""
    name, parts, mode = "OURS_decode", ("decode",), MODE_DECODE


@register
class OursSerial(_TritonPod):
    """Our prefill then our decode: two launches on one stream."""
    name, serial = "OURS_Serial", True


@register
class OursStreams(_TritonPod):
    """Our prefill and decode launches on two CUDA streams."""
    name, serial, streams, devices = "OURS_Streams", True, True, ("cuda",)


@register
class OursCTA(_TritonPod):
    """One launch, CTAs split by block index (no SM awareness)."""
    name, mode = "OURS_CTA", MODE_CTA


@register
class POD(_TritonPod):
    """One launch, SM-aware CTA scheduling (the paper's POD-Attention)."""
    name, mode = "POD", MODE_POD


def smid_trace(batch, config: PodConfig | None = None, smid_table: torch.Tensor | None = None):
    """Run POD once recording, for every physical CTA, (operation, logical CTA id, SM slot, start ns,
    end ns). Tests check with it that every logical CTA runs exactly once under any SM mapping; on
    the GPU it gives the CTA timeline (experiments/timeline.py)."""
    plan = make_plan(batch.spec, MODE_POD, num_sms(batch.device), config)
    n = plan.n_prefill_ctas + plan.n_decode_ctas
    trace = torch.full((n, 5), -1, dtype=torch.int64, device=batch.device)
    run = prepare_launch(batch, plan, (config or PodConfig()).kv_layout == "paged", smid_table=smid_table,
                         trace=trace)
    out = run()
    return plan, trace, out, run
