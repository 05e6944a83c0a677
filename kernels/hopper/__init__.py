"""Hopper-native (sm_90a) POD kernel in Gluon: TMA, asynchronous wgmma, warp specialization with
setmaxnreg, persistent CTAs holding a prefill and a decode pipeline (see docs/hopper-kernel-notes.md)."""
