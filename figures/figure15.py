"""Figure 15: request throughput against the prefill:decode ratio (simulated, calibrated on the
GPU), Sarathi with FlashAttention-2 serial against POD (and FlashInfer's POD), and POD's gain.
    python -m figures.figure15 --root RESULTS/serving --out figure15.png [--table figure15.csv]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.atomic import save_figure, write_csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def table(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary["kind"] == "simulate"].copy()
    s["pd_ratio"] = [json.loads(w)["pd_ratio"] for w in s["workload"]]
    t = s.pivot_table(index="pd_ratio", columns="backend", values="requests_per_minute").reset_index()
    for b in [c for c in t.columns if c not in ("pd_ratio", "FA_Serial")]:
        if "FA_Serial" in t:
            t[f"gain_{b}_pct"] = 100 * (t[b] / t["FA_Serial"] - 1)
    return t


def plot(t: pd.DataFrame, model: str, gpu: str = ""):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    backends = [c for c in t.columns if c not in ("pd_ratio",) and not c.startswith("gain_")]
    color = {b: f"C{i}" for i, b in enumerate(backends)}   # one colour per backend in both panels
    for b in backends:
        a1.plot(t["pd_ratio"], t[b], "o-", color=color[b], label="Sarathi" if b == "FA_Serial" else f"Sarathi+{b}")
    a1.set_xlabel("P:D ratio")
    a1.set_ylabel("requests per minute")
    a1.grid(alpha=0.3)
    a1.legend()
    for c in [c for c in t.columns if c.startswith("gain_")]:
        b = c.removeprefix("gain_").removesuffix("_pct")
        a2.plot(t["pd_ratio"], t[c], "s-", color=color.get(b), label=f"Sarathi+{b}")
    a2.axhline(0, color="gray", lw=0.8)
    a2.set_xlabel("P:D ratio")
    a2.set_ylabel("throughput gain over Sarathi (%)")
    a2.grid(alpha=0.3)
    a2.legend()
    fig.suptitle(f"Throughput vs P:D (Figure 15), {model}, simulated from latencies measured on "
                 f"{gpu or 'the GPU'} (one GPU, TP1)")
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None)
    a = ap.parse_args(argv)
    summary = pd.read_csv(Path(a.root) / "figure15" / "summary.csv")
    t = table(summary)
    if a.table:
        write_csv(t, a.table, index=False)
    gpus = summary["calibrated_on"].dropna().astype(str) if "calibrated_on" in summary else pd.Series([], dtype=str)
    save_figure(plot(t, ", ".join(sorted(set(summary["model"]))), ", ".join(sorted(set(gpus) - {""}))), a.out, dpi=130)
    print(t.to_string(index=False))


if __name__ == "__main__":
    main()
