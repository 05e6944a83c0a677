"""Discrete-event simulator of the serving engine: the same schedulers, block pool, serving loop
and metrics, with each iteration's duration taken from a latency source instead of the GPU.

Latency sources:
  * ``ReplayLatency``: the durations an engine run recorded, iteration by iteration (it checks
    that the simulated batch is the one the engine ran); the simulator must then reproduce that
    run's metrics exactly.
  * ``LatencyModel``: a linear model of iteration time fitted per (model, backend, tp, decode graphs) to iterations
    measured on the GPU:
        t = c0 + c_tok * max(tokens, knee) + c_seq * sequences + c_pp * prefill (query, key) pairs
            + c_pk * prefill keys + c_dk * decode keys + c_pre * [a prefill runs]
            [+ c_ov * min(c_pp * pairs, c_dk * decode keys)]
    ``knee``: below it the weight GEMMs cost the same for any token count (they read the weights,
    memory-bound); above it they grow with the tokens (compute-bound). It is picked by the fit, not
    from a GPU's data sheet. The last term (fitted only when it helps, any sign) lets a fused
    backend's prefill and decode attention overlap: its coefficient comes out negative when they do.
    ``c_pre``: an iteration with a prefill runs other launches than a decode-only one (a fused
    kernel, a prefill kernel); without it a backend whose fused launch costs more to start was
    over-predicted by 23-27% on the 1-8 decode iterations that fill an online run (table 5).
    An engine replaying decode-only iterations as CUDA graphs (serving/graphs.py) adds
    ``c_slots * decode_slots`` (see ``decode_slots``): without it the graphed FlashAttention-2
    engine's decode-only iterations of 3-16 sequences in table 5's online runs were under-predicted
    by 23-36% (median per size), with it by -2% to +3% up to 8 sequences (+21% at 9-16): their cost
    follows the graph's padded rows and key bound, not the keys attended. Even so a replay's cost
    follows its launch geometry (split-KV splits and waves), which no line in slots draws: the
    graphed fit was 6-11% low on FA_Serial's replays of 2-8 rows under a 32K bound, while per graph
    key the online runs' replays took what the profiles' replays of that key took (within 6%). So
    each graph key the fitting rows replay gets a factor (``graph_factors``: the median of measured
    over linear prediction on that key's rows); keys the rows lack keep the line.
    The fit minimises relative errors, so that 10 ms decode iterations count as much as 100 ms
    prefill ones. Rows that sample a run (windows) keep their run's mix; a profile is a designed
    grid with no mix of its own, so within the profiles each kind of iteration (decode-only,
    prefill-only, both) weighs the same however many of each the grid holds (``kind_weights``):
    unweighted, table 5's graphed profiles (11 whole prompts among 110 iterations) left whole
    prompts under-predicted by 16% (median), and vLLM's TTFT, which waits on them, by 25%.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.common.nnls import nonneg_lstsq

from .graphs import graph_shape
from .scheduler import Batch, BlockPool, LoopResult, make_scheduler, serve_loop
from .trace import RequestSpec

BASE_FEATURES = ["const", "num_tokens", "num_seqs", "prefill_pairs", "prefill_kv", "decode_kv", "has_prefill",
                 "decode_slots"]


KNEES = (0, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024)   # candidate knees (tokens)


def min_fit_rows(graphs: dict | None = None) -> int:
    """Iterations a fit needs: one per column it uses (``decode_slots`` only with graphs)."""
    return len(BASE_FEATURES) - (0 if graphs else 1)


def decode_slots(f: dict, graphs: dict | None) -> float:
    """A graphed engine's (``graphs``: its decode-graph options) decode key slots: for a decode-only
    batch a graph replays, its rows x its key bound (FlashAttention's split-KV launch divides the
    bound, not each row's length, so a graph pays for the box it was captured for); otherwise the
    decode keys. 0 for an eager engine (the column then stays out of its fit)."""
    if not graphs:
        return 0.0
    shape = _replayed_shape(f, graphs)
    return float(shape[0] * shape[1]) if shape is not None else float(f["decode_kv"])


def _replayed_shape(f: dict, graphs: dict | None) -> tuple[int, int] | None:
    """(padded rows, key bound) of the graph a graphed engine replays for this iteration; None when
    no graph runs it (an eager engine, an iteration with a prefill, a batch past every graph)."""
    if not graphs or f["prefill_tokens"]:
        return None
    return graph_shape(f["num_decodes"], f["decode_kv_max"], graphs["batch_sizes"], graphs["min_context"])


def graph_key(f: dict, graphs: dict | None) -> str | None:
    """``"<rows>x<key bound>"`` of the graph replayed for this iteration (``_replayed_shape``)."""
    shape = _replayed_shape(f, graphs)
    return None if shape is None else f"{shape[0]}x{shape[1]}"


def iteration_kind(f: dict) -> str:
    """``decode``, ``prefill`` or ``mixed``: which attention work the iteration holds."""
    if not f["prefill_pairs"]:
        return "decode"
    return "mixed" if f["decode_kv"] else "prefill"


SAMPLED_KINDS = ("window", "online")    # run kinds whose iterations sample a real run's mix


def kind_weights(rows: list[dict]) -> np.ndarray:
    """Per-row fit weights, mean 1: rows of a sampled run (``kind`` in ``SAMPLED_KINDS``) weigh 1
    each; the other rows (profiles, or rows without a ``kind``) keep their total weight, shared so
    that each iteration kind (``iteration_kind``) among them weighs the same."""
    grid = [i for i, r in enumerate(rows) if r.get("kind") not in SAMPLED_KINDS]
    w = np.ones(len(rows))
    if grid:
        kinds = [iteration_kind(rows[i]) for i in grid]
        counts = {k: kinds.count(k) for k in set(kinds)}
        g = np.array([1.0 / counts[k] for k in kinds])
        w[grid] = g * (len(grid) / g.sum())
    return w


def _base_vector(f: dict, knee: float = 0.0, graphs: dict | None = None) -> list[float]:
    return [1.0, max(f["num_tokens"], knee), f["num_seqs"], f["prefill_pairs"], f["prefill_kv"], f["decode_kv"],
            1.0 if f["prefill_pairs"] else 0.0, decode_slots(f, graphs)]


@dataclass
class LatencyModel:
    """Iteration latency (seconds) as a function of a batch's features."""

    coef: dict
    overlap_scale: tuple = (0.0, 0.0)   # (c_pp, c_dk) used inside the overlap term
    stats: dict = field(default_factory=dict)
    graphs: dict | None = None          # the engine's decode-graph options (serving/graphs.py) if it used them
    graph_factors: dict = field(default_factory=dict)   # graph key ("rowsxbound") -> measured / linear

    def predict_features(self, f: dict) -> float:
        t = self._linear(f)
        k = graph_key(f, self.graphs)
        return t * self.graph_factors.get(k, 1.0) if k else t

    def _linear(self, f: dict) -> float:
        x = dict(zip(BASE_FEATURES, _base_vector(f, self.coef.get("knee", 0.0), self.graphs)))
        t = sum(self.coef.get(k, 0.0) * v for k, v in x.items())
        if self.coef.get("overlap"):
            a, b = self.overlap_scale
            t += self.coef["overlap"] * min(a * f["prefill_pairs"], b * f["decode_kv"])
        return max(t, 0.0)

    def __call__(self, batch: Batch, index: int) -> float:
        return self.predict_features(batch.features())

    @classmethod
    def fit(cls, rows: list[dict], overlap: bool = True, graphs: dict | None = None) -> "LatencyModel":
        """Fit to iteration rows (features + ``duration``), the knee chosen among ``KNEES`` by the
        smallest squared relative error; ``overlap`` adds the overlap term when the batches hold
        both prefill and decode work; ``graphs``: the rows come from an engine replaying decode-only
        iterations as CUDA graphs with these options (adds the ``decode_slots`` column)."""
        if len(rows) < min_fit_rows(graphs):
            raise ValueError(f"need at least {min_fit_rows(graphs)} iterations to fit, got {len(rows)}")
        y = np.array([float(r["duration"]) for r in rows])
        w = kind_weights(rows)
        sw = np.sqrt(w)
        best = None
        for knee in KNEES:
            X = np.array([_base_vector(r, knee, graphs) for r in rows], dtype=float)
            c = nonneg_lstsq(X / y[:, None] * sw[:, None], sw)
            model = cls({**dict(zip(BASE_FEATURES, map(float, c))), "knee": float(knee)},
                        (float(c[3]), float(c[5])), graphs=graphs)
            if overlap and c[3] > 0 and c[5] > 0 and any(r["prefill_pairs"] and r["decode_kv"] for r in rows):
                ov = np.array([min(c[3] * r["prefill_pairs"], c[5] * r["decode_kv"]) for r in rows])
                X2 = np.column_stack([X, ov])
                c2 = nonneg_lstsq(X2 / y[:, None] * sw[:, None], sw, free={X2.shape[1] - 1})
                cand = cls({**dict(zip(BASE_FEATURES, map(float, c2[:-1]))), "knee": float(knee),
                            "overlap": float(c2[-1])}, model.overlap_scale, graphs=graphs)
                if cand._sse(rows, w) < model._sse(rows, w):
                    model = cand
            if best is None or model._sse(rows, w) < best._sse(rows, w):
                best = model
        ratios: dict = {}
        for r in rows:
            k = graph_key(r, graphs)
            if k and best._linear(r) > 0:
                ratios.setdefault(k, []).append(float(r["duration"]) / best._linear(r))
        best.graph_factors = {k: float(np.median(v)) for k, v in sorted(ratios.items())}
        best.stats = best.evaluate(rows)
        return best

    def _sse(self, rows, weights) -> float:
        """Sum of squared relative errors, weighted (``kind_weights``)."""
        err = [(self.predict_features(r) / float(r["duration"]) - 1.0) ** 2 for r in rows]
        return float(np.dot(weights, err))

    def evaluate(self, rows: list[dict]) -> dict:
        """Fit quality on ``rows``: n, mean absolute percentage error, max error, total-time error."""
        pred = np.array([self.predict_features(r) for r in rows])
        y = np.array([float(r["duration"]) for r in rows])
        err = (pred - y) / y
        return {"n": int(len(rows)), "mape": float(np.mean(np.abs(err))), "max_abs_rel_err": float(np.max(np.abs(err))),
                "total_rel_err": float(pred.sum() / y.sum() - 1.0)}

    def to_dict(self) -> dict:
        d = {"coef": self.coef, "overlap_scale": list(self.overlap_scale), "stats": self.stats}
        if self.graphs:
            d["graphs"] = self.graphs
            d["graph_factors"] = self.graph_factors
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyModel":
        return cls(dict(d["coef"]), tuple(d.get("overlap_scale", (0.0, 0.0))), dict(d.get("stats", {})),
                   d.get("graphs"), dict(d.get("graph_factors", {})))


class ReplayLatency:
    """The durations of a recorded run, in order; raises if the simulated batch differs."""

    KEYS = ("num_tokens", "num_decodes", "prefill_tokens", "prefill_kv", "decode_kv")

    def __init__(self, iterations: list[dict]):
        self.iterations = iterations

    def __call__(self, batch: Batch, index: int) -> float:
        if index >= len(self.iterations):
            raise IndexError(f"replay has {len(self.iterations)} iterations, the simulation needs more")
        rec, f = self.iterations[index], batch.features()
        for k in self.KEYS:
            if int(rec[k]) != int(f[k]):
                raise AssertionError(f"iteration {index}: simulated {k}={f[k]} but the engine ran {rec[k]}")
        return float(rec["duration"])


def simulate(specs: list[RequestSpec], scheduler_cfg: dict, num_blocks: int, block_size: int,
             latency, max_iterations: int | None = None) -> LoopResult:
    """Run ``specs`` through the scheduler with iteration times from ``latency``."""
    pool = BlockPool(num_blocks, block_size)
    sched = make_scheduler(scheduler_cfg, pool)
    return serve_loop(specs, sched, latency, max_iterations=max_iterations)


def capacity_qps(specs: list[RequestSpec], scheduler_cfg: dict, num_blocks: int, block_size: int,
                 latency, cap_factor: float = 3.0) -> float:
    """Nominal QPS (before the gap cap) whose offered rate equals the offline request throughput
    of ``specs`` (all arriving at 0): the load at which the system is exactly saturated."""
    offline = [RequestSpec(s.rid, s.prompt_len, s.output_len, 0.0) for s in specs]
    res = simulate(offline, scheduler_cfg, num_blocks, block_size, latency)
    rps = len(offline) / res.clock
    return rps * (1.0 - math.exp(-cap_factor))


def save_models(path: str | Path, models: dict) -> None:
    Path(path).write_text(json.dumps(models, indent=1, sort_keys=True))


def load_models(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
