"""The shared non-negative least squares (kernels/common/nnls.py): the optimum, checked by its
optimality (KKT) conditions on random problems, and free columns that may go negative."""
import numpy as np
import pytest

from kernels.common.nnls import nonneg_lstsq


def kkt_ok(a, b, x, free=(), tol=1e-7):
    """x >= 0 off ``free``; the gradient vanishes on free and positive coefficients and points
    outwards (>= 0) where a coefficient sits at 0."""
    g = a.T @ (a @ x - b)
    scale = np.abs(a).max(axis=0) * max(1.0, np.abs(b).max()) * len(b)
    for j in range(a.shape[1]):
        if j in free or x[j] > 0:
            if abs(g[j]) > tol * scale[j]:
                return False
        elif x[j] < 0 or g[j] < -tol * scale[j]:
            return False
    return True


@pytest.mark.parametrize("seed", range(12))
def test_random_problems_satisfy_the_optimality_conditions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    # columns of very different magnitudes, as in the latency model (1, tokens, key pairs ~1e8)
    a = rng.random((40, n)) * 10.0 ** rng.integers(-2, 8, size=n)
    truth = rng.normal(size=n)
    b = a @ truth + rng.normal(scale=0.01, size=40)
    free = {n - 1} if seed % 2 else set()
    x = nonneg_lstsq(a, b, free=free)
    assert all(x[j] >= 0 for j in range(n) if j not in free)
    assert kkt_ok(a, b, x, free)


def test_feasible_unconstrained_optimum_is_returned_unchanged():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = a @ np.array([0.5, 2.0])
    assert np.allclose(nonneg_lstsq(a, b), [0.5, 2.0])


def test_negative_coefficient_is_clamped_and_a_free_one_is_not():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = a @ np.array([3.0, -1.0])             # a falling line
    x = nonneg_lstsq(a, b)
    assert x[1] == 0.0 and x[0] == pytest.approx(b.mean())
    assert np.allclose(nonneg_lstsq(a, b, free={1}), [3.0, -1.0])
    assert np.allclose(nonneg_lstsq(a, -np.ones(4)), 0.0)   # nothing non-negative helps
