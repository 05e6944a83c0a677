"""HFuse-style warp-parallel fused prefill+decode attention, built in Triton's Gluon.

kernel.py: the Gluon kernel (prefill in warps 0-3, decode in warps 4-7 of every CTA, each group on
its own named barrier); plan.py: tiles and split planning from the SM count (pure Python);
launch.py: availability, arguments, launch, merge and the ahead-of-time compile.
"""
from .plan import HFuseConfig, HFusePlan, HFuseTiles, make_plan  # noqa: F401
