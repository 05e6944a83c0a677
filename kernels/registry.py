"""The one place methods are registered.

A method is a small adapter class: it says which parts of a hybrid batch it computes, whether it
can run here, and turns a ``HybridBatch`` into a zero-argument callable that launches its kernels
and returns ``{"prefill": (Lq, H, d), "decode": (bs, H, d)}`` (only the parts it computes).
Everything outside the callable (planning, workspace allocation) happens in ``prepare`` and is not
timed. Adapters live in ``kernels/adapters/*.py`` and register themselves with ``@register``;
every module there is imported by ``load_all()``, so adding a method touches no other file.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, ClassVar

import torch

from .workload import HybridBatch

Outputs = dict  # {"prefill": Tensor, "decode": Tensor}


class MethodUnavailable(Exception):
    """Raised when a method cannot run here (missing library, no GPU) or on this shape."""


class Method:
    """Base class of every method adapter. Subclasses set ``name`` and ``parts`` and implement
    ``prepare``; options from the experiment YAML arrive as keyword arguments."""

    name: ClassVar[str] = ""
    parts: ClassVar[tuple] = ("prefill", "decode")
    devices: ClassVar[tuple] = ("cuda",)
    description: ClassVar[str] = ""
    # methods that launch the same compiled kernels name one group, so the build step never
    # compiles a kernel from two threads at once (None: a group of its own)
    build_group: ClassVar[str | None] = None

    def __init__(self, **options):
        self.options = options

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None if this method can run on ``device``, else a sentence saying why not and what to install."""
        if device.type not in self.devices:
            return f"{self.name} runs on {'/'.join(self.devices)} only, not {device.type}"
        return None

    def require_parts(self, batch: HybridBatch) -> None:
        """Raise MethodUnavailable when ``batch`` lacks a part this method computes."""
        s = batch.spec
        missing = [p for p, has in (("prefill", s.has_prefill), ("decode", s.has_decode))
                   if p in self.parts and not has]
        if missing:
            raise MethodUnavailable(f"this batch has no {' or '.join(missing)} part")

    def checked_parts(self, batch: HybridBatch) -> tuple:
        """The parts this method computes that ``batch`` has (what its check compares): a fused
        method on a prefill-only or decode-only batch computes just that part."""
        has = {"prefill": batch.spec.has_prefill, "decode": batch.spec.has_decode}
        return tuple(p for p in self.parts if has[p])

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        """Plan for ``batch`` and return the callable to check and time. May raise MethodUnavailable."""
        raise NotImplementedError

    def info(self) -> dict:
        """Implementation details recorded on every row (which library/backend actually ran)."""
        return {"impl": self.name}


_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method adapter to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Method]]:
    """Import every adapter module under kernels/adapters and return the registry."""
    from . import adapters

    for mod in pkgutil.iter_modules(adapters.__path__):
        importlib.import_module(f"{adapters.__name__}.{mod.name}")
    return dict(_METHODS)


def create(name: str, **options) -> Method:
    """Instantiate the registered method ``name`` with YAML options."""
    methods = load_all()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(methods))}")
    return methods[name](**options)
