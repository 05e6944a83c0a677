"""Figure 12: offline serving throughput (requests per minute) per model and system.

Bars: the simulator's full-length runs (1000/2000 requests) driven by latency models fitted to the
GPU iterations; dots: the GPU's own steady-state estimate from its measured window (Sarathi: a
consecutive window; vLLM: every k-th iteration over its cycle). Usage:
    python -m figures.figure12 --root RESULTS/serving --out figure12.png [--table figure12.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis.atomic import save_figure, write_csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

SYSTEMS = [("vllm", "FA_Serial", "vLLM"), ("sarathi", "FA_Serial", "Sarathi"), ("sarathi", "FI_Serial", "Sarathi+FI_Serial"),
           ("sarathi", "FI_Batched", "Sarathi+FI_Batched"), ("sarathi", "FI_POD", "Sarathi+FI_POD"),
           ("sarathi", "POD", "Sarathi+POD")]
MODELS = ["yi-6b", "llama-3-8b", "llama-2-7b"]


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, system): simulated and window-measured requests/minute, and the
    simulated gain over Sarathi (FA_Serial) and over vLLM."""
    rows = []
    models = [m for m in MODELS if m in set(summary["model"])] + sorted(set(summary["model"]) - set(MODELS))
    for model in models:
        s = summary[summary["model"] == model]
        sim = s[s["kind"] == "simulate"]
        win = s[s["kind"] == "window"]
        base = {}
        for sched, backend, label in SYSTEMS:
            pick = lambda d: d[(d["scheduler"] == sched) & (d["backend"] == backend)]  # noqa: E731
            a, b = pick(sim), pick(win)
            if a.empty and b.empty:
                continue
            rpm = float(a["requests_per_minute"].iloc[0]) if len(a) else float("nan")
            w = float(b["window_requests_per_minute"].iloc[0]) if len(b) and "window_requests_per_minute" in b else float("nan")
            base.setdefault(label, rpm)
            rows.append({"model": model, "system": label, "scheduler": sched, "backend": backend,
                         "sim_requests_per_minute": rpm, "window_requests_per_minute": w,
                         "gpu": ", ".join(sorted(map(str, win["gpu_name"].dropna().unique()))) if len(win) else ""})
        for r in rows:
            if r["model"] == model:
                r["gain_over_sarathi_pct"] = 100 * (r["sim_requests_per_minute"] / base.get("Sarathi", float("nan")) - 1)
                r["gain_over_vllm_pct"] = 100 * (r["sim_requests_per_minute"] / base.get("vLLM", float("nan")) - 1)
    return pd.DataFrame(rows)


def plot(t: pd.DataFrame):
    models = list(dict.fromkeys(t["model"]))
    labels = [s[2] for s in SYSTEMS if s[2] in set(t["system"])]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.8), layout="constrained", squeeze=False)
    for ax, model in zip(axes[0], models):
        m = t[t["model"] == model].set_index("system")
        xs = range(len(labels))
        vals = [m["sim_requests_per_minute"].get(lb, float("nan")) for lb in labels]
        ax.bar(xs, vals, color=[f"C{i}" for i in xs], label="simulated, full run")
        wins = [m["window_requests_per_minute"].get(lb, float("nan")) for lb in labels]
        ax.plot(xs, wins, "kD", markersize=5, label="GPU window estimate")
        for x, v, w in zip(xs, vals, wins):
            if v == v:
                # above the bar and its diamond, so that neither hides the number
                ax.annotate(f"{v:.1f}", (x, max(v, w) if w == w else v), xytext=(0, 5), textcoords="offset points",
                            ha="center", fontsize=8)
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=9)
        ax.set_title(model)
        ax.set_ylabel("requests per minute")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    gpu = ", ".join(sorted(set(t["gpu"]))) or "unknown GPU"
    fig.suptitle(f"Offline throughput (Figure 12), one GPU at TP1: {gpu}")
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="serving results root (holds figure12/summary.csv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None)
    a = ap.parse_args(argv)
    t = table(pd.read_csv(Path(a.root) / "figure12" / "summary.csv"))
    if a.table:
        write_csv(t, a.table, index=False)
    fig = plot(t)
    save_figure(fig, a.out, dpi=130)
    print(t.to_string(index=False))


if __name__ == "__main__":
    main()
