"""CTA timeline: prefill and decode CTAs running during one traced launch, a panel per (batch, method).

Reads ``meta["timeline"]`` and ``meta["timeline_summary"]`` (analysis.timeline's tables, passed by
figures.plot --timeline/--timeline-summary); the experiment's own table gives each method's timed
median for the panel titles. Rows are hybrid batches, columns the traced methods; x is time from
the launch's first CTA start, shared along a row, y the number of running CTAs, shared by all.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import FONT_SIZE

PART_COLOURS = {"prefill": "tab:blue", "decode": "tab:orange"}
ZERO_TIMES_NOTE = "every CTA time is 0 (Triton interpreter on the CPU): no timing to draw"


def _message_figure(meta: dict, text: str):
    """A figure that says why there is nothing to draw (instead of failing the workflow)."""
    fig, ax = plt.subplots(figsize=(9, 3), layout="constrained")
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_title(f"{meta['name']}: CTA timeline")
    return fig


def _batch_label(table: pd.DataFrame, row_key: str, baseline: str) -> str:
    """'model / prefill N @ KV / decode B x ctx / baseline ms' from the table, else the row key."""
    rows = table[table["row_key"] == row_key] if "row_key" in table else table.iloc[:0]
    if rows.empty:
        return row_key.replace("|", "\n")
    r = rows.iloc[0]
    try:
        text = (f"{r['model']}\nprefill {int(r['prefill_len'])} @ KV {int(r['prefill_kv_len'])}\n"
                f"+ {int(r['decode_batch'])} decodes x {int(r['decode_ctx'])}")
    except (KeyError, ValueError, TypeError):
        text = row_key.replace("|", "\n")
    base = r.get(f"ms_{baseline}", np.nan)
    return text + (f"\n{baseline} {base:.2f} ms" if pd.notna(base) else "")


def _timed_ms(table: pd.DataFrame, row_key: str, method: str) -> float:
    column = f"ms_{method}"
    if column not in table or "row_key" not in table:
        return np.nan
    values = table.loc[table["row_key"] == row_key, column].dropna()
    return float(values.iloc[0]) if len(values) else np.nan


def _share_line(s: pd.Series) -> str:
    """'only P 50% | both 49% | only D 1%' of a summary line (shares of the traced launch)."""
    shares = [(name, s.get(f"{state}_frac", np.nan))
              for name, state in (("only P", "only_prefill"), ("both", "both"), ("only D", "only_decode"))]
    return " | ".join(f"{name} {100 * v:.0f}%" for name, v in shares if pd.notna(v))


def _panel(ax, series: pd.DataFrame, s: pd.Series | None) -> None:
    """Step curves of one launch, or a note saying why there are none."""
    status = s.get("status", "ok") if s is not None else "ok"
    if status != "ok":
        reason = s.get("reason", "")
        ax.text(0.5, 0.5, f"{status}\n{reason if isinstance(reason, str) else ''}"[:120], ha="center",
                va="center", transform=ax.transAxes, fontsize=FONT_SIZE - 3, wrap=True)
        return
    zero = s is not None and s.get("zero_times") in (True, "True")
    if series.empty or zero:
        counts = ""
        if s is not None:
            counts = f"\n{int(s.get('prefill_ctas', 0) or 0)} prefill, {int(s.get('decode_ctas', 0) or 0)} decode CTAs"
        ax.text(0.5, 0.5, "all CTA times 0\n(CPU interpreter)" + counts, ha="center", va="center",
                transform=ax.transAxes, fontsize=FONT_SIZE - 3)
        return
    t = series["t_us"].to_numpy()
    for part, colour in PART_COLOURS.items():
        y = series[f"running_{part}"].to_numpy()
        ax.fill_between(t, y, step="post", color=colour, alpha=0.25, linewidth=0)
        ax.step(t, y, where="post", color=colour, linewidth=1.4)


def plot(table: pd.DataFrame, summary: pd.DataFrame, meta: dict):
    """Running prefill and decode CTAs over time, one panel per (batch, method) of the timeline."""
    series, launches = meta.get("timeline"), meta.get("timeline_summary")
    if launches is None or series is None:
        return _message_figure(meta, "no CTA timeline for this experiment: its trace "
                                     "(raw/<exp>/timeline/ctas.csv.gz, the trace_timeline rule) is missing")
    if launches.empty:
        return _message_figure(meta, "the CTA timeline holds no launch")
    keys = list(dict.fromkeys(launches["row_key"]))
    in_table = list(table["row_key"]) if "row_key" in table else []
    batches = [k for k in in_table if k in keys] + [k for k in keys if k not in in_table]
    methods = list(dict.fromkeys(launches["method"]))
    by_launch = {key: s for key, s in zip(zip(launches["row_key"], launches["method"]),
                                          (r for _, r in launches.iterrows()))}
    groups = {key: g for key, g in series.groupby(["row_key", "method"], sort=False)}
    zero_all = "zero_times" in launches and launches["zero_times"].isin([True, "True"]).all()

    with plt.rc_context({"font.size": FONT_SIZE - 2}):
        fig, axes = plt.subplots(len(batches), len(methods), figsize=(2.9 * len(methods) + 2.2, 2.5 * len(batches) + 1.6),
                                 layout="constrained", sharex="row", sharey=True, squeeze=False)
        for i, row_key in enumerate(batches):
            for j, method in enumerate(methods):
                ax = axes[i][j]
                s = by_launch.get((row_key, method))
                _panel(ax, groups.get((row_key, method), series.iloc[:0]), s)
                ms = _timed_ms(table, row_key, method)
                if pd.notna(ms) and (row_key, method) in groups and not zero_all:
                    ax.axvline(1e3 * ms, color="0.3", linestyle=":", linewidth=1.2)
                title = f"{method}: {ms:.3f} ms" if pd.notna(ms) else f"{method}: not timed"
                shares = _share_line(s) if s is not None else ""
                ax.set_title(title + (f"\n{shares}" if shares else ""), fontsize=FONT_SIZE - 3)
                ax.grid(alpha=0.3)
                ax.set_ylim(bottom=0)
            axes[i][0].set_ylabel(f"{_batch_label(table, row_key, meta['baseline'])}\n\nrunning CTAs",
                                  fontsize=FONT_SIZE - 3)
        handles = [plt.Line2D([], [], color=c, linewidth=3, label=f"{p} CTAs running") for p, c in PART_COLOURS.items()]
        handles.append(plt.Line2D([], [], color="0.3", linestyle=":", linewidth=1.2, label="timed median"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        for ax in axes[-1]:
            ax.set_xlabel("time in the launch (µs)")
        gpus = ", ".join(sorted(map(str, launches["gpu_name"].dropna().unique()))) if "gpu_name" in launches else ""
        sms = (", ".join(str(int(v)) for v in sorted(launches["sm_count"].dropna().unique()))
               if "sm_count" in launches else "")
        machine = f"{gpus or 'unknown GPU'}" + (f" ({sms} SMs)" if sms and not zero_all else "")
        note = ZERO_TIMES_NOTE if zero_all else (
            "panel title: timed median of the method (dotted line); only P / both / only D: share of the "
            "traced launch when only prefill, both or only decode CTAs run")
        fig.suptitle(f"{meta['name']}: CTAs running during one traced launch, {machine}\n{note}",
                     fontsize=FONT_SIZE - 1)
    return fig
