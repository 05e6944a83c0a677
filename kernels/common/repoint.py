"""Re-pointing prepared launches at other tensors of the same geometry.

A serving engine runs the same attention shape in every layer of a model, each layer on its own
queries and K/V cache. Planning and preparing a launch (plans, TMA descriptors, split partials,
scheduler counters) once per iteration and re-pointing its tensor arguments at each layer's
tensors keeps the planning out of the per-layer path. ``prepared_launches`` finds the launch
objects (``MergedLaunch``: ``kwargs``, ``merger``, ``out_p``/``out_d``) inside a prepared callable
of any of our kernel families; ``Repointer`` records which arguments (tensors, or TMA descriptors
over them) are views of the given base tensors and rebuilds those views on other bases;
``place_outputs`` makes the launches write their outputs into slices of one buffer.
"""
from __future__ import annotations

import dataclasses

import torch

from kernels.common.merge import MergedLaunch


def prepared_launches(run) -> list:
    """The launch objects of a prepared callable, in launch order: a ``MergedLaunch`` itself, the
    ``launch_state`` of a one-launch callable, or those of each of its ``parts`` (a serial run)."""
    if isinstance(run, MergedLaunch):
        return [run]
    if hasattr(run, "launch_state"):
        return [run.launch_state]
    if hasattr(run, "parts"):
        return [launch for part in run.parts for launch in prepared_launches(part)]
    raise TypeError(f"{run!r} exposes no launch objects (MergedLaunch, launch_state or parts)")


def _is_descriptor(value) -> bool:
    return dataclasses.is_dataclass(value) and isinstance(getattr(value, "base", None), torch.Tensor)


def _owner(t: torch.Tensor, bases: dict) -> str | None:
    """The name of the base tensor whose memory holds ``t``'s first element, if any."""
    if t.numel() == 0:
        return None
    p = t.data_ptr()
    for name, b in bases.items():
        start = b.data_ptr()
        if b.dtype == t.dtype and start <= p < start + b.numel() * b.element_size():
            return name
    return None


class Repointer:
    """The arguments of ``launches`` that are views of ``bases`` ({name: tensor}); ``point`` sets
    them to the same views of other tensors (same shape, strides and dtype as the bases)."""

    def __init__(self, launches, bases: dict):
        self.bases = {k: (tuple(b.shape), b.stride(), b.dtype) for k, b in bases.items()}
        self.slots = []     # (kwargs, argument name, base name, size, stride, element offset, descriptor)
        for launch in launches:
            for name, value in launch.kwargs.items():
                desc = value if _is_descriptor(value) else None
                t = desc.base if desc is not None else value
                if not isinstance(t, torch.Tensor):
                    continue
                key = _owner(t, bases)
                if key is None:
                    continue
                offset = (t.data_ptr() - bases[key].data_ptr()) // t.element_size()
                self.slots.append((launch.kwargs, name, key, tuple(t.shape), t.stride(), offset, desc))

    def point(self, tensors: dict) -> None:
        """Re-point every recorded argument at the same view of ``tensors[name]``."""
        for key, t in tensors.items():
            if (tuple(t.shape), t.stride(), t.dtype) != self.bases[key]:
                raise ValueError(f"{key}: shape {tuple(t.shape)}, strides {t.stride()}, {t.dtype} differ from the "
                                 f"tensor the launches were prepared on {self.bases[key]}")
        for kwargs, name, key, size, stride, offset, desc in self.slots:
            base = tensors[key]
            view = base.as_strided(size, stride, base.storage_offset() + offset)
            kwargs[name] = view if desc is None else dataclasses.replace(desc, base=view)


def place_outputs(launches, out_p: torch.Tensor | None, out_d: torch.Tensor | None) -> None:
    """Make each launch write its prefill output into ``out_p`` and its decode output into
    ``out_d`` (same shapes and strides as the outputs it allocated), merge included."""
    for launch in launches:
        for part, new in (("p", out_p), ("d", out_d)):
            if not getattr(launch, f"do_{part}", False):
                continue
            old = getattr(launch, f"out_{part}")
            if new is None or tuple(new.shape) != tuple(old.shape) or new.stride() != old.stride():
                raise ValueError(f"output of part {part!r}: got {None if new is None else tuple(new.shape)}, "
                                 f"the launch writes {tuple(old.shape)} with strides {old.stride()}")
            for kwargs in (launch.kwargs, launch.merger.kwargs):
                for name, value in kwargs.items():
                    if value is old:
                        kwargs[name] = new
            setattr(launch, f"out_{part}", new)


__all__ = ["Repointer", "place_outputs", "prepared_launches"]
