"""Keyword arguments of a kernel launch, with a positional view for callers that re-point
arguments by position (serving/backends.py swaps the query, K/V and output tensors per layer)."""
from __future__ import annotations


def param_names(kernel) -> list:
    """Parameter names of a Triton/Gluon jit function (or an interpreted one), in order."""
    params = getattr(kernel, "params", None)
    if params is not None:
        return [p.name for p in params]
    return list(kernel.arg_names)


class PositionalArgs:
    """The non-constexpr arguments of ``kwargs`` in the kernel's parameter order, as a list-like
    view: reading and assigning an index reads and writes ``kwargs``."""

    def __init__(self, kwargs: dict, names):
        self._kwargs = kwargs
        self._names = [n for n in names if n in kwargs]

    def __len__(self):
        return len(self._names)

    def __iter__(self):
        return (self._kwargs[n] for n in self._names)

    def __getitem__(self, i):
        return self._kwargs[self._names[i]]

    def __setitem__(self, i, value):
        self._kwargs[self._names[i]] = value

    def assign(self, values) -> None:
        """Replace every argument, in order (``launch.args = [...]``)."""
        values = list(values)
        if len(values) != len(self._names):
            raise ValueError(f"{len(values)} arguments for {len(self._names)} parameters")
        for n, v in zip(self._names, values):
            self._kwargs[n] = v


__all__ = ["PositionalArgs", "param_names"]
