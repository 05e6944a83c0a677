"""Table 5 (arXiv trace) and the labelled stand-in for Tables 4/6: TTFT, TBT and request latency
P50/P99 (s) and the share of requests with a stall over 200/500 ms, per load and system, from the
simulator's 2,048-request runs; plus the simulator's validation against the GPU's online runs.
    python -m figures.table5 --root RESULTS/serving --out table5.csv [--markdown table5.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.atomic import write_csv

import pandas as pd

COLS = ["ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "request_latency_p50", "request_latency_p99",
        "stall_200ms_pct", "stall_500ms_pct"]


def _system(r) -> str:
    if r["scheduler"] == "vllm":
        return "vLLM (original)" + ("" if r["backend"] == "FA_Serial" else f" + {r['backend']}")
    name = "Sarathi" if r["backend"] == "FA_Serial" else f"Sarathi+{r['backend']}"
    return name


def table(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary["kind"] == "simulate"].copy()
    s["trace"] = [json.loads(w)["kind"] for w in s["workload"]]
    s["system"] = s.apply(_system, axis=1)
    s["chunk"] = s["chunk_size"].fillna(0)
    keep = ["label", "trace", "capacity_fraction", "qps", "system", "chunk", "completed", "request_throughput"] + COLS
    t = s[[c for c in keep if c in s]].sort_values(["trace", "capacity_fraction", "chunk", "system"])
    return t.reset_index(drop=True)


def validation_summary(validation: pd.DataFrame) -> pd.DataFrame:
    """Checks passed of checks made, one row per online run, one column per check kind."""
    v = validation.assign(cell=validation["pass"].astype(bool))
    counts = v.groupby(["run_id", "check"])["cell"].agg(lambda x: f"{int(x.sum())}/{len(x)}")
    return counts.unstack("check").fillna("-").reset_index()


def markdown(t: pd.DataFrame, validation: pd.DataFrame | None, steadiness: pd.DataFrame | None = None) -> str:
    lines = []
    for (trace, label), g in t.groupby(["trace", "label"], sort=False):
        lines.append(f"### {trace}: {label}\n")
        lines.append("| load (x capacity) | QPS | system | chunk | TTFT P50 | TTFT P99 | TBT P50 | TBT P99 | "
                     "latency P50 | latency P99 | stalls >200ms % | >500ms % |")
        lines.append("|---" * 12 + "|")
        for _, r in g.iterrows():
            lines.append(f"| {r['capacity_fraction']:.3f} | {r['qps']:.3f} | {r['system']} | "
                         f"{int(r['chunk']) if r['chunk'] else '-'} | " + " | ".join(f"{r[c]:.2f}" for c in COLS) + " |")
        lines.append("")
    if validation is not None and len(validation):
        lines.append("### simulator validation against the GPU's online runs\n")
        lines.append("Checks passed per online run (limits: throughput 5%, P50s 10%, P99s 20%). `calibrated_model`: "
                     "the simulator fed the latency model fitted to the windows and profiles; `repeat:<folder>`: "
                     "the same configuration measured again (the engine against itself); "
                     "`calibrated_model@<folder>`: the model against that repeat, at the repeat's load; runs ending in `-graphs` "
                     "replay their decode-only iterations as CUDA graphs.\n")
        lines.append(validation_summary(validation).to_markdown(index=False))
        lines.append("")
        if steadiness is not None and len(steadiness):
            lines.append("How steady each measured online run was (serving.run.decode_steadiness): its decode-only "
                         "iterations against the others of their batch size, the same work. A wide spread is time "
                         "spent outside the work, which no latency model of the work reproduces.\n")
            lines.append(steadiness.to_markdown(index=False, floatfmt=".3f"))
            lines.append("")
        lines.append(validation.to_markdown(index=False))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args(argv)
    root = Path(a.root) / "table5"
    t = table(pd.read_csv(root / "summary.csv"))
    write_csv(t, a.out, index=False)
    val = pd.read_csv(root / "validation.csv") if (root / "validation.csv").exists() else None
    steady = pd.read_csv(root / "steadiness.csv") if (root / "steadiness.csv").exists() else None
    if a.markdown:
        try:
            Path(a.markdown).write_text(markdown(t, val, steady))
        except ImportError:  # DataFrame.to_markdown needs tabulate
            extra = "" if val is None else (validation_summary(val).to_string(index=False) + "\n\n" + val.to_string(index=False))
            if steady is not None:
                extra += "\n\n" + steady.to_string(index=False)
            Path(a.markdown).write_text(markdown(t, None) + "\n" + extra)
    print(t.to_string(index=False))


if __name__ == "__main__":
    main()
