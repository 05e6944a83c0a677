"""Serving metrics under Sarathi-Serve's and vLLM ``bench serve``'s names, from request timelines.

Per request (times in seconds, from the run's time 0):
  TTFT = first token time (end of the iteration with the last prefill chunk) - arrival;
  TBT (vLLM: ITL) = gaps between consecutive output tokens, pooled over all requests for P50/P99;
  request latency (vLLM: E2EL) = last token time - arrival;
  TPOT = (last token - first token) / (output tokens - 1), requests with more than one token;
  scheduling delay = start of the first iteration that ran the request - arrival;
  stall > X ms: the request has at least one TBT above X.
Throughput (vLLM): completed requests / duration and output (or input + output) tokens / duration,
duration = last completion - first arrival... except offline runs (all arrivals at 0), where it is
the last completion, which also gives the artifact's requests per minute = N * 60 / duration.
Percentiles are numpy's (linear interpolation), as vLLM's benchmark computes them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 99)
STALL_THRESHOLDS_MS = (200, 500)


def request_rows(requests) -> pd.DataFrame:
    """One row per request (finished or not) with its own timeline statistics."""
    rows = []
    for r in requests:
        t = r.token_times
        gaps = np.diff(t) if len(t) > 1 else np.empty(0)
        row = {"rid": r.rid, "arrival": r.arrival, "prompt_len": r.spec.prompt_len, "output_len": r.spec.output_len,
               "finished": bool(r.finished), "tokens_out": len(t),
               "first_scheduled": r.first_scheduled, "first_token": t[0] if t else None,
               "completion": t[-1] if r.finished else None}
        row["scheduling_delay"] = None if r.first_scheduled is None else r.first_scheduled - r.arrival
        row["ttft"] = None if not t else t[0] - r.arrival
        row["e2el"] = row["request_latency"] = None if not r.finished else t[-1] - r.arrival
        row["tpot"] = float(gaps.mean()) if (r.finished and gaps.size) else None
        row["tbt_max"] = float(gaps.max()) if gaps.size else None
        row["tbt_sum"] = float(gaps.sum()) if gaps.size else 0.0
        row["n_tbt"] = int(gaps.size)
        for ms in STALL_THRESHOLDS_MS:
            row[f"stalls_{ms}ms"] = int((gaps > ms / 1e3).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(values, prefix: str) -> dict:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and np.isnan(x))], dtype=float)
    out = {f"{prefix}_mean": float(v.mean()) if v.size else float("nan")}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(v, p)) if v.size else float("nan")
    return out


def summarize(requests, offline: bool | None = None) -> dict:
    """One row of run-level metrics (both vocabularies) over the finished requests."""
    done = [r for r in requests if r.finished]
    out: dict = {"num_requests": len(requests), "completed": len(done)}
    if not done:
        return out
    first_arrival = min(r.arrival for r in requests)
    last = max(r.token_times[-1] for r in done)
    if offline is None:
        offline = all(r.arrival == 0 for r in requests)
    duration = last if offline else last - first_arrival
    out["duration_s"] = duration
    out["request_throughput"] = len(done) / duration if duration > 0 else float("nan")
    out["requests_per_minute"] = len(done) * 60.0 / last if last > 0 else float("nan")
    out_tokens = sum(len(r.token_times) for r in done)
    in_tokens = sum(r.spec.prompt_len for r in done)
    out["output_token_throughput"] = out_tokens / duration if duration > 0 else float("nan")
    out["total_token_throughput"] = (out_tokens + in_tokens) / duration if duration > 0 else float("nan")
    ttft = [r.token_times[0] - r.arrival for r in done]
    e2el = [r.token_times[-1] - r.arrival for r in done]
    tbt = np.concatenate([np.diff(r.token_times) for r in done if len(r.token_times) > 1] or [np.empty(0)])
    tpot = [float(np.mean(np.diff(r.token_times))) for r in done if len(r.token_times) > 1]
    delay = [r.first_scheduled - r.arrival for r in done]
    out.update(_pct(ttft, "ttft"))
    out.update(_pct(tbt, "tbt"))          # Sarathi's TBT
    out.update(_pct(tbt, "itl"))          # vLLM's ITL: the same gaps
    out.update(_pct(tpot, "tpot"))
    out.update(_pct(e2el, "e2el"))        # vLLM's E2EL = Sarathi's request latency
    out.update(_pct(e2el, "request_latency"))
    out.update(_pct(delay, "scheduling_delay"))
    for ms in STALL_THRESHOLDS_MS:
        stalled = sum(1 for r in done if len(r.token_times) > 1 and np.diff(r.token_times).max() > ms / 1e3)
        out[f"stall_{ms}ms_pct"] = 100.0 * stalled / len(done)
    return out


def window_throughput(iterations, prompt_len: int, output_len: int, cycle_slots: int | None = None) -> dict:
    """Steady-state throughput of an offline run of identical requests from measured iterations.

    Every request needs ``prompt_len`` prefill and ``output_len - 1`` decode slots. With
    ``cycle_slots`` (the slots of one whole cycle of the schedule, known exactly from a dry run)
    and per-iteration ``weight`` (how many cycle iterations each sampled one stands for), the
    cycle's time is estimated as sum(weight * duration) and requests/s = cycle_slots / per-request
    slots / that time. Without them: slots processed / per-request slots / time of the iterations."""
    its = [it for it in iterations if it["measured"]]
    if not its:
        return {}
    per_req = prompt_len + output_len - 1
    t_meas = sum(it["duration"] for it in its)
    if cycle_slots is not None:
        t = sum(it.get("weight", 1) * it["duration"] for it in its)
        slots = cycle_slots
    else:
        t = t_meas
        slots = sum(it["prefill_tokens"] + it["num_decodes"] for it in its)
    rps = slots / per_req / t
    return {"window_iterations": len(its), "window_s": t_meas, "window_tokens_per_s": slots / t,
            "window_requests_per_minute": rps * 60.0,
            "window_mean_iteration_ms": 1e3 * t_meas / len(its)}
