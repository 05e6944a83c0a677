"""Workloads: request lengths (fixed P:D, the arXiv trace, a labelled stand-in for the private
trace) and arrival times (all at once, or Poisson with capped gaps), as the artifact made them.

The arXiv sampling follows Sarathi-Serve's trace length generator as the artifact configured it:
integer token counts, each request's total clipped to ``max_tokens`` by taking the excess off
prefill and decode in proportion (ceil of each share), requests with at most ``min_prefill``
prefill tokens dropped, rows shuffled with ``seed`` (pandas ``sample(frac=1)``), first ``n`` kept.
Poisson gaps are drawn with Python's ``random`` seeded with ``seed`` as -ln(1-U)/qps, each capped
at 3/qps; the first request arrives one gap after time 0.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
ARXIV_CSV = REPO / "data" / "arxiv_sample.csv"
# E[min(X, 3/qps)] * qps for X exponential with rate qps: the capped process offers qps / this.
CAPPED_MEAN_GAP = 1.0 - math.exp(-3.0)


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload: ``prompt_len`` prefill tokens, ``output_len`` generated tokens
    (the first comes out of the last prefill chunk), arriving at ``arrival`` seconds."""

    rid: int
    prompt_len: int
    output_len: int
    arrival: float = 0.0

    def __post_init__(self):
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"request {self.rid}: prompt_len and output_len must be >= 1")

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.output_len


# ---------------------------------------------------------------- request lengths
def split_by_pd_ratio(total: int, pd_ratio: float) -> tuple[int, int]:
    """(prefill, decode) of a ``total``-token request with prefill:decode ``pd_ratio``, decode =
    ceil(total / (1 + ratio)) as the artifact's figure-12 script (16384 at P:D 8 = 14563 + 1821)."""
    if total < 2 or pd_ratio < 0:
        raise ValueError("need total >= 2 and pd_ratio >= 0")
    decode = math.ceil(total / (1.0 + pd_ratio))
    decode = min(max(decode, 1), total - 1)
    return total - decode, decode


def fixed_lengths(n: int, total: int, pd_ratio: float) -> list[tuple[int, int]]:
    """``n`` identical requests (figure 12, figure 15)."""
    p, d = split_by_pd_ratio(total, pd_ratio)
    return [(p, d)] * n


def load_trace(path: str | Path = ARXIV_CSV) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = {"num_prefill_tokens", "num_decode_tokens"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df


def clip_to_max_tokens(df: pd.DataFrame, max_tokens: int) -> pd.DataFrame:
    """Integer counts; a request over ``max_tokens`` loses the excess from prefill and decode in
    proportion to their shares (ceil of each), then each count is at least 1."""
    out = df.copy()
    p = out["num_prefill_tokens"].astype(int)
    d = out["num_decode_tokens"].astype(int)
    total = p + d
    excess = (total - max_tokens).clip(lower=0)
    p = p - np.ceil(excess * p / total).astype(int)
    d = d - np.ceil(excess * d / total).astype(int)
    out["num_prefill_tokens"] = p.clip(lower=1)
    out["num_decode_tokens"] = d.clip(lower=1)
    if ((out["num_prefill_tokens"] + out["num_decode_tokens"]) > max_tokens).any():
        raise AssertionError("clipping left a request over max_tokens")
    return out


def sample_trace(df: pd.DataFrame, n: int = 2048, max_tokens: int = 32768, min_prefill: int = 2048,
                 seed: int = 42) -> list[tuple[int, int]]:
    """(prefill, decode) of ``n`` requests sampled from a trace as the artifact's table-6 run did."""
    clipped = clip_to_max_tokens(df, max_tokens)
    kept = clipped[clipped["num_prefill_tokens"] > min_prefill]
    shuffled = kept.sample(frac=1, random_state=seed)
    if len(shuffled) < n:
        raise ValueError(f"the trace has {len(shuffled)} requests after filtering, fewer than {n}")
    rows = shuffled.head(n)
    return list(zip(rows["num_prefill_tokens"].astype(int).tolist(), rows["num_decode_tokens"].astype(int).tolist()))


def arxiv_lengths(n: int = 2048, seed: int = 42, max_tokens: int = 32768, min_prefill: int = 2048,
                  path: str | Path = ARXIV_CSV) -> list[tuple[int, int]]:
    return sample_trace(load_trace(path), n=n, max_tokens=max_tokens, min_prefill=min_prefill, seed=seed)


def standin_internal_lengths(n: int = 2048, mean_context: float = 10_500, mean_decode: float = 331,
                             max_pd: float = 40.0, max_tokens: int = 32768, seed: int = 42,
                             path: str | Path = ARXIV_CSV) -> list[tuple[int, int]]:
    """A STAND-IN for the paper's private enterprise trace (Tables 4 and 6), built only from its
    published statistics: totals resampled from the arXiv trace's totals and scaled to a mean of
    ``mean_context``; P:D = ``max_pd`` * U**a with ``a`` solved (bisection) so that the mean decode
    is ``mean_decode``. It is not the private trace and results on it must say so."""
    rng = np.random.default_rng(seed)
    totals = load_trace(path)["num_total_tokens"].to_numpy(dtype=float)
    tot = rng.choice(totals, size=n, replace=True)
    tot = np.minimum(np.round(tot * mean_context / tot.mean()), max_tokens).astype(int)
    u = rng.random(n)

    def decodes(a: float) -> np.ndarray:
        r = max_pd * u ** a
        return np.clip(np.ceil(tot / (1.0 + r)), 1, tot - 1).astype(int)

    lo, hi = 1e-4, 1.0  # mean decode falls as a falls (ratios pushed toward max_pd)
    if decodes(hi).mean() < mean_decode or decodes(lo).mean() > mean_decode:
        raise ValueError("mean_decode not reachable with this max_pd")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if decodes(mid).mean() > mean_decode:
            hi = mid
        else:
            lo = mid
    d = decodes(math.sqrt(lo * hi))
    return [(int(t - x), int(x)) for t, x in zip(tot, d)]


# ---------------------------------------------------------------- arrivals
def poisson_arrivals(n: int, qps: float, seed: int = 42, cap_factor: float = 3.0) -> list[float]:
    """Arrival times of ``n`` requests: gaps -ln(1-U)/qps capped at ``cap_factor``/qps, Python's
    ``random`` seeded with ``seed``, first arrival one gap after 0."""
    if qps <= 0:
        raise ValueError("qps must be > 0")
    rng = random.Random(seed)
    cap = cap_factor / qps
    t, out = 0.0, []
    for _ in range(n):
        t += min(-math.log(1.0 - rng.random()) / qps, cap)
        out.append(t)
    return out


def offered_rate(qps: float, cap_factor: float = 3.0) -> float:
    """Mean arrival rate of the capped Poisson process (qps / 0.9502 for the factor 3)."""
    return qps / (1.0 - math.exp(-cap_factor))


def make_requests(lengths: list[tuple[int, int]], arrivals: list[float] | None = None) -> list[RequestSpec]:
    if arrivals is None:
        arrivals = [0.0] * len(lengths)
    if len(arrivals) != len(lengths):
        raise ValueError("one arrival per request")
    return [RequestSpec(i, int(p), int(d), float(a)) for i, ((p, d), a) in enumerate(zip(lengths, arrivals))]


def build_workload(spec: dict) -> list[RequestSpec]:
    """Requests from a YAML ``workload:`` mapping:
    kind fixed (n, total, pd_ratio) | arxiv (n, seed, max_tokens, min_prefill) | standin_internal (n, ...)
    | explicit (lengths: [[p, d], ...]); arrivals: offline (default) or qps (+ seed, cap_factor)."""
    spec = dict(spec)
    kind = spec.pop("kind")
    qps = spec.pop("qps", None)
    arrival_seed = spec.pop("arrival_seed", 42)
    cap_factor = spec.pop("cap_factor", 3.0)
    if kind == "fixed":
        lengths = fixed_lengths(spec["n"], spec["total"], spec["pd_ratio"])
    elif kind == "arxiv":
        lengths = arxiv_lengths(n=spec.get("n", 2048), seed=spec.get("seed", 42),
                                max_tokens=spec.get("max_tokens", 32768), min_prefill=spec.get("min_prefill", 2048))
        if "scale" in spec:  # smoke runs: the same mix shrunk to tiny lengths
            s = float(spec["scale"])
            lengths = [(max(1, round(p * s)), max(1, round(d * s))) for p, d in lengths]
    elif kind == "standin_internal":
        lengths = standin_internal_lengths(n=spec.get("n", 2048), seed=spec.get("seed", 42))
        if "scale" in spec:
            s = float(spec["scale"])
            lengths = [(max(1, round(p * s)), max(1, round(d * s))) for p, d in lengths]
    elif kind == "explicit":
        lengths = [tuple(x) for x in spec["lengths"]]
    else:
        raise ValueError(f"unknown workload kind {kind!r}")
    arrivals = None if qps is None else poisson_arrivals(len(lengths), float(qps), seed=arrival_seed,
                                                         cap_factor=cap_factor)
    return make_requests(lengths, arrivals)
