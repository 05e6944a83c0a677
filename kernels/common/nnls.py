"""Non-negative least squares for the small linear cost models of the harness (our kernels' cost
model in kernels/pod/calibration.py, the serving simulator's iteration latency model): numpy only."""
from __future__ import annotations

import itertools

import numpy as np


def nonneg_lstsq(a, b, free=()) -> np.ndarray:
    """``argmin |a x - b|`` with ``x[j] >= 0`` for every column ``j`` not in ``free``, exactly: every
    support of the constrained columns is solved unconstrained and the best feasible one kept (the
    optimum's support is among them). For the few unknowns these models have (<= 8 constrained:
    256 small solves). Columns are scaled to unit maximum so that the solves are well conditioned."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.shape[1]
    free = sorted(set(free))
    constrained = [j for j in range(n) if j not in free]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-300) if len(a) else np.ones(n)
    scaled = a / scale
    best, best_res = np.zeros(n), float(b @ b)
    for k in range(len(constrained) + 1):
        for support in itertools.combinations(constrained, k):
            cols = sorted(free + list(support))
            if not cols:
                continue
            coef, *_ = np.linalg.lstsq(scaled[:, cols], b, rcond=None)
            if any(c < 0 for j, c in zip(cols, coef) if j not in free):
                continue
            res = float(np.sum((scaled[:, cols] @ coef - b) ** 2))
            if res < best_res - 1e-15 * max(1.0, best_res):
                best = np.zeros(n)
                best[cols] = coef
                best_res = res
    return best / scale
