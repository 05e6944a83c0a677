"""Figure 4: one hybrid iteration's time split into prefill attention, decode attention and the
rest (linear layers, norms, RoPE, sampling, host work) for each context length, per backend.
    python -m figures.figure4 --root RESULTS/serving --out figure4.png [--table figure4.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis.atomic import save_figure, write_csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def table(root: Path) -> pd.DataFrame:
    frames = [pd.read_csv(f) for f in sorted((root / "figure4" / "runs").glob("*/breakdown.csv"))]
    t = pd.concat(frames, ignore_index=True)
    if "total_s" in t:
        t["attention_share_pct"] = 100 * t["attention_s"] / t["total_s"]
    return t


def plot(t: pd.DataFrame):
    backends = list(dict.fromkeys(t["backend"]))
    fig, axes = plt.subplots(1, len(backends), figsize=(5.5 * len(backends), 4.5), layout="constrained",
                             squeeze=False, sharey=True)
    for ax, b in zip(axes[0], backends):
        d = t[(t["backend"] == b) & t["total_s"].notna()].sort_values("context")
        x = [f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in d["context"]]
        bottom = 0
        parts = [("prefill_attention_s", "prefill attention", "C0"), ("decode_attention_s", "decode attention", "C1"),
                 ("fused_attention_s", "attention (one launch)", "C4"), ("other_s", "others", "C2")]
        for col, label, color in parts:
            if col not in d or d[col].isna().all():
                continue
            v = 1e3 * d[col].fillna(0).to_numpy()
            ax.bar(x, v, bottom=bottom, label=label, color=color)
            bottom = bottom + v
        for i, (tot, share) in enumerate(zip(1e3 * d["total_s"], d["attention_share_pct"])):
            ax.annotate(f"{share:.0f}%", (i, tot), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
        skipped = t[(t["backend"] == b) & t["total_s"].isna()]["context"].tolist()
        ax.set_title(b + (f" (does not fit: {', '.join(map(str, skipped))})" if skipped else ""), fontsize=9)
        ax.set_xlabel("context length")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("iteration time (ms); label: attention share")
    r = t.iloc[0]
    gpu = r.get("gpu_name", "")
    fig.suptitle(f"Iteration breakdown (Figure 4): {r['model']}, {int(r['num_decodes'])} decodes, "
                 f"prefill chunk {int(r['prefill_tokens'])}; {gpu}\n"
                 "(paper, Figure 4: attention is over 60% of the iteration at 16K context)")
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None)
    a = ap.parse_args(argv)
    t = table(Path(a.root))
    if a.table:
        write_csv(t, a.table, index=False)
    save_figure(plot(t), a.out, dpi=130)
    cols = [c for c in ("backend", "context", "total_s", "prefill_attention_s", "decode_attention_s", "fused_attention_s",
                        "other_s", "attention_share_pct") if c in t]
    print(t[cols].to_string(index=False))


if __name__ == "__main__":
    main()
