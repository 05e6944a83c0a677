"""Results report generated from the aggregated tables: every number is read from them, so the
report cannot drift from what the figures show.

    python -m analysis.report --tables results/tables --out results/REPORT.md figure11 figure1 ...
    python -m analysis.report --studies --tables results/tables --out results/STUDIES.md pod_knobs ...

Per experiment: the GPU and SM count of its rows, the number of hybrid batches (and how many the
filter keeps), and the per-method summary of ``<exp>_summary.csv`` (analysis.aggregate). Figure 11
adds, from its wide table, how often POD is faster than each other fused method on the kept
batches, POD's headline numbers (``pod_targets``) and its record against the best peer by the
share of FlashInfer's prefill (``pod_by_prefill_share``); figure 7 (micro-benchmark) has its own summary columns. ``--studies`` writes the same for
the tuning studies (experiments/studies/), each with what it measures (its YAML's description) and
the command that reproduces it. The file is rewritten only when its text changes.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import yaml

from analysis.atomic import write_text_if_changed
from kernels.catalogue import BEST_PEERS, DERIVED, PHASES, method_parts

# the parts of the best peers: a perfect-overlap bound without them would be a bound over slower parts
PEER_PARTS = tuple(p for m in BEST_PEERS for p in DERIVED.get(m, ()))

# studies that re-time figure 11 with queue_ahead, each a subset of its methods timed in one lease:
# the best-peer and own-serial comparisons, the fusion baselines beside POD, and the best-peer
# comparison again on the kept batches (with the POD and serial path of a later commit)
RETIMED_FIGURE11 = ("figure11_queue_ahead", "figure11_fusion_baselines", "figure11_h200_kept")

ROOT = Path(__file__).resolve().parents[1]
PAPER_ORDER = ["figure1", "figure6", "figure7", "figure10", "figure11", "figure13", "figure14", "table7"]
# figure 11: the fused methods POD is compared with, batch by batch, on the kept batches
FIG11_RIVALS = ["FI_POD", "HFuse", "OURS_CTA", "OURS_Serial", "FI_Serial", "FI_Batched_fa2", "FI_Batched_auto",
                "FA_Streams", "FA_Serial"]
ROLE_ORDER = {"baseline": 0, "method": 1, "part": 2}

LEGEND = """\
How to read the tables: per method, over the batches the experiment's filter keeps, `n` batches,
the mean / median / min / max of its speedup over the experiment's baseline (baseline time over the
method's time: above 1 is faster), the share of batches where it is slower than the baseline, the
share where it is at or below the best peer (the fastest of `FA_Serial`, `FI_Serial`, `FI_POD`,
where the experiment has them), and the median fraction of the physical limit (max(bytes / HBM
bandwidth, FLOPs / tensor peak) over the method's time). `role`: `baseline`, `method` (a way of
running the whole hybrid batch) or `part` (prefill or decode alone). Column definitions:
docs/ARCHITECTURE.md; README.md says what each figure shows.
"""


def speedup(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def share(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def experiment_yaml(name: str) -> Path:
    for path in (ROOT / "experiments" / f"{name}.yaml", ROOT / "experiments" / "studies" / f"{name}.yaml",
                 ROOT / "experiments" / "microbench" / f"{name}.yaml"):
        if path.exists():
            return path
    raise FileNotFoundError(f"no experiment YAML named {name}")


def read_doc(name: str) -> dict:
    with open(experiment_yaml(name)) as f:
        return yaml.safe_load(f) or {}


def machines(*frames) -> str:
    """'GPU (N SMs)' for every (gpu_name, sm_count) in the frames."""
    pairs = set()
    for f in frames:
        if f is not None and {"gpu_name", "sm_count"} <= set(f.columns):
            pairs |= {(str(g), int(s)) for g, s in f[["gpu_name", "sm_count"]].dropna().itertuples(index=False)}
    return ", ".join(f"{g} ({s} SMs)" for g, s in sorted(pairs)) or "unknown GPU"


def timing_modes(table: pd.DataFrame) -> str:
    """The table's timing modes (its ``timing`` column), most batches first, with their counts."""
    if "timing" not in table.columns:
        return "not in this table"
    counts = table["timing"].fillna("none").value_counts()
    if len(counts) == 1:
        return f"`{counts.index[0]}`"
    return ", ".join(f"`{mode}` ({n} batches)" for mode, n in counts.items())


def summary_table(summary: pd.DataFrame, baseline: str) -> list[str]:
    """Markdown rows of a per-method summary (analysis.aggregate's <exp>_summary.csv)."""
    s = summary.copy()
    s["_order"] = s["role"].map(ROLE_ORDER).fillna(3)
    s = s.sort_values("_order", kind="stable")
    lines = [f"| method | role | n | mean | median | min | max | slower than {baseline} | at or below best peer "
             "| median fraction of the limit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s.itertuples(index=False):
        lines.append(f"| {r.method} | {r.role} | {int(r.n)} | {speedup(r.mean_speedup)} | {speedup(r.median_speedup)} "
                     f"| {speedup(r.min_speedup)} | {speedup(r.max_speedup)} | {share(r.frac_slower)} "
                     f"| {share(r.frac_at_or_below_best_peer)} | {speedup(r.median_limit_fraction)} |")
    return lines


def kept_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the experiment's filter keeps (all rows of a table without a ``kept`` column)."""
    return table[table["kept"].astype(bool)] if "kept" in table else table


def pod_faster_shares(table: pd.DataFrame) -> dict:
    """{rival: share of kept batches (with both timed) where POD's time is below the rival's}."""
    kept = kept_rows(table)
    out = {}
    for rival in FIG11_RIVALS:
        a, b = f"ms_POD", f"ms_{rival}"
        if a in kept and b in kept:
            both = kept[[a, b]].dropna()
            if len(both):
                out[rival] = ((both[a] < both[b]).sum(), len(both))
    return out


def perfect_overlap_bound(table: pd.DataFrame) -> pd.Series:
    """Per batch, the larger of its fastest prefill alone and its fastest decode alone (every timed
    part counts); NaN where a phase has no part timed."""
    parts = {ph: [c for c in table if c.startswith("ms_") and method_parts(c[3:]) == (ph,)] for ph in PHASES}
    return pd.concat([table[parts[ph]].min(axis=1, skipna=True) for ph in PHASES], axis=1).max(axis=1, skipna=False)


def pod_targets(table: pd.DataFrame) -> list[tuple[str, str]]:
    """POD's headline numbers on a figure-11 wide table, each where its columns exist:
    (what, value) pairs. The perfect-overlap bound of a batch is the larger of its fastest prefill
    alone and its fastest decode alone (every timed part counts; reported where the best peers'
    parts are among them)."""
    kept = kept_rows(table)
    out = []
    if {"ms_POD", "best_peer_ms"} <= set(table):
        for where, t in (("kept", kept), ("all", table)):
            both = t[["ms_POD", "best_peer_ms"]].dropna()
            if len(both):
                out.append((f"POD at or below the best peer, {where} batches ({len(both)})",
                            share((both["ms_POD"] <= both["best_peer_ms"]).mean())))
    if {"ms_POD", *(f"ms_{p}" for p in PEER_PARTS)} <= set(table):
        ratio = (kept["ms_POD"] / perfect_overlap_bound(kept)).dropna()
        if len(ratio):
            out.append((f"POD / perfect-overlap bound, kept batches: median, p90 ({len(ratio)})",
                        f"{ratio.median():.3f}, {ratio.quantile(0.9):.3f}"))
    if {"ms_POD", "ms_OURS_Serial"} <= set(table):
        r = (table["ms_POD"] / table["ms_OURS_Serial"]).dropna()
        if len(r):
            slow = r > 1.02
            out.append((f"POD slower than OURS_Serial by more than 2%, all batches ({len(r)})",
                        f"{int(slow.sum())} ({share(slow.mean())}), worst {r.max():.3f}"))
    if {"ms_OURS_prefill", "ms_FI_prefill_auto"} <= set(table):
        r = (kept["ms_FI_prefill_auto"] / kept["ms_OURS_prefill"]).dropna()
        if len(r):
            out.append((f"OURS_prefill's rate over FI_prefill_auto's, kept batches: median ({len(r)})",
                        f"{r.median():.3f}"))
    return out


def pod_by_prefill_share(table: pd.DataFrame, edges=(0.0, 0.2, 0.3, 0.4, 0.5, 1.0)) -> pd.DataFrame:
    """Where POD wins and loses against the best peer, on the kept batches binned by the share of
    FlashInfer's prefill in FI_Serial (FI_prefill_auto / FI_Serial): per bin the batches, the share
    where POD is at or below the best peer and the median POD / best peer. Empty without the columns."""
    need = {"ms_POD", "best_peer_ms", "ms_FI_prefill_auto", "ms_FI_Serial"}
    if not need <= set(table):
        return pd.DataFrame()
    kept = kept_rows(table)
    t = kept[list(need)].dropna()
    bins = pd.cut(t["ms_FI_prefill_auto"] / t["ms_FI_Serial"], list(edges), include_lowest=True)
    ratio = t["ms_POD"] / t["best_peer_ms"]
    out = pd.DataFrame({"batches": ratio.groupby(bins, observed=False).size(),
                        "at_or_below": (ratio <= 1.0).groupby(bins, observed=False).mean(),
                        "median_over_best_peer": ratio.groupby(bins, observed=False).median()})
    return out[out["batches"] > 0]


def pod_trailing(table: pd.DataFrame) -> pd.DataFrame:
    """What POD's losses to the best peer are made of, on the kept batches: for the batches where POD
    is above the best peer and for those at or below it, how many, the median POD / best peer and
    POD / OURS_Serial (about 1: POD ran its serial path, or a fused launch gained nothing), and our
    parts against FlashInfer's (OURS_prefill / FI_prefill_auto, OURS_decode / FI_decode) with the
    share of batches where ours is the slower. Empty without the columns."""
    need = {"ms_POD", "best_peer_ms", "ms_OURS_Serial", "ms_OURS_prefill", "ms_FI_prefill_auto",
            "ms_OURS_decode", "ms_FI_decode"}
    if not need <= set(table):
        return pd.DataFrame()
    t = kept_rows(table)[list(need)].dropna()
    rows = {}
    for label, part in (("above the best peer", t[t["ms_POD"] > t["best_peer_ms"]]),
                        ("at or below", t[t["ms_POD"] <= t["best_peer_ms"]])):
        if not len(part):
            continue
        pre = part["ms_OURS_prefill"] / part["ms_FI_prefill_auto"]
        dec = part["ms_OURS_decode"] / part["ms_FI_decode"]
        rows[label] = {"batches": len(part),
                       "pod_over_best_peer": (part["ms_POD"] / part["best_peer_ms"]).median(),
                       "pod_over_ours_serial": (part["ms_POD"] / part["ms_OURS_Serial"]).median(),
                       "prefill_ours_over_fi": pre.median(), "prefill_ours_slower": (pre > 1).mean(),
                       "decode_ours_over_fi": dec.median(), "decode_ours_slower": (dec > 1).mean()}
    return pd.DataFrame.from_dict(rows, orient="index")


def attention_section(name: str, tables: Path) -> list[str]:
    doc = read_doc(name)
    table = pd.read_csv(tables / f"{name}.csv")
    summary = pd.read_csv(tables / f"{name}_summary.csv")
    baseline = doc.get("baseline") or "FA_Serial"
    n_kept = len(kept_rows(table))
    lines = [f"**GPU:** {machines(table, summary)}. **Batches:** {len(table)} hybrid batches, {n_kept} kept by "
             f"the filter. **Baseline:** `{baseline}`. **Timing:** {timing_modes(table)}. "
             f"Source: `{shown(tables)}/{name}_summary.csv`.", ""]
    if name == "figure11":
        retimed = [r for r in RETIMED_FIGURE11 if (tables / f"{r}.csv").exists()]
        held_back = "timing" in table and table["timing"].fillna("").map(lambda t: "queue_ahead" in t.split("+")).all()
        if retimed and not held_back:
            lines[-1:-1] = ["", "This grid was timed without queue_ahead (its short parts carry host launch time). "
                            "Re-timed with it in this tree: " + ", ".join(f"`{r}`" for r in retimed) + " (STUDIES.md); "
                            "the figure-11 claims (CLAIMS.md) read those."]
    lines += summary_table(summary, baseline)
    if {"figure11", *RETIMED_FIGURE11} & {name, doc.get("extends")}:
        shares = pod_faster_shares(table)
        if shares:
            lines += ["", "POD faster than, on the kept batches where both were timed "
                      f"(`ms_POD` < `ms_<method>` in `{shown(tables)}/{name}.csv`):", "",
                      "| method | batches where POD is faster | share |", "|---|---|---|"]
            lines += [f"| {m} | {k} of {n} | {share(k / n)} |" for m, (k, n) in shares.items()]
        targets = pod_targets(table)
        if targets:
            lines += ["", "POD's headline numbers (analysis.report.pod_targets):", "", "| what | value |", "|---|---|"]
            lines += [f"| {what} | {value} |" for what, value in targets]
        bins = pod_by_prefill_share(table)
        if len(bins):
            lines += ["", "POD against the best peer on the kept batches, by the share of FlashInfer's prefill in "
                      "`FI_Serial` (analysis.report.pod_by_prefill_share):", "",
                      "| FI prefill share | batches | POD at or below the best peer | median POD / best peer |",
                      "|---|---|---|---|"]
            lines += [f"| {max(b.left, 0.0):.0%}-{b.right:.0%} | {int(r.batches)} | {share(r.at_or_below)} "
                      f"| {r.median_over_best_peer:.3f} |" for b, r in zip(bins.index, bins.itertuples())]
        trailing = pod_trailing(table)
        if len(trailing):
            lines += ["", "What POD's losses are made of, kept batches, medians (analysis.report.pod_trailing; "
                      "\"ours slower\": the share of batches where our part takes longer than FlashInfer's):", "",
                      "| POD | batches | POD / best peer | POD / OURS_Serial | OURS_prefill / FI_prefill_auto "
                      "| ours slower | OURS_decode / FI_decode | ours slower |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {label} | {int(r.batches)} | {r.pod_over_best_peer:.3f} | {r.pod_over_ours_serial:.3f} "
                      f"| {r.prefill_ours_over_fi:.3f} | {share(r.prefill_ours_slower)} | {r.decode_ours_over_fi:.3f} "
                      f"| {share(r.decode_ours_slower)} |" for label, r in zip(trailing.index, trailing.itertuples())]
    return lines


def figure7_section(tables: Path) -> list[str]:
    table = pd.read_csv(tables / "figure7.csv")
    summary = pd.read_csv(tables / "figure7_summary.csv")
    lines = [f"**GPU:** {machines(table)}. **Points:** {len(table)} compute shares. "
             f"Source: `{shown(tables)}/figure7_summary.csv`.", "",
             "| variant | n | mean speedup over serial | min | max | mean time over the ideal | max time over the ideal |",
             "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.variant} | {int(r.n)} | {speedup(r.mean_speedup_over_serial)} | {speedup(r.min_speedup)} "
                     f"| {speedup(r.max_speedup)} | {speedup(r.mean_time_over_ideal)} | {speedup(r.max_time_over_ideal)} |")
    return lines


def serving_section(root: Path) -> list[str]:
    """The end-to-end half from the serving tables under ``root`` (<tree>/serving/tables/): figure 12's
    throughput per system, figure 15's gains, figure 4's attention shares and table 5 as rendered."""
    t = root / "tables"
    out = ["## Serving (end-to-end)", "",
           f"Source: `{shown(root)}/tables/` (built from the engine's GPU runs and the simulator calibrated on them; "
           f"`{shown(root)}/MANIFEST.md` says which run came from where).", ""]
    if (t / "figure12.csv").exists():
        f12 = pd.read_csv(t / "figure12.csv")
        out += ["### figure12", "", f"**GPU:** {', '.join(sorted(set(map(str, f12['gpu'].dropna()))))}, one GPU at TP1. "
                "Requests per minute: the simulator's full-length run (the GPU window estimate).", "",
                "| model | " + " | ".join(dict.fromkeys(f12["system"])) + " |",
                "|---|" + "---|" * f12["system"].nunique()]
        for model, g in f12.groupby("model", sort=False):
            cells = {r.system: f"{r.sim_requests_per_minute:.1f} ({r.window_requests_per_minute:.1f})" for r in g.itertuples()}
            out.append(f"| {model} | " + " | ".join(cells.get(sy, "–") for sy in dict.fromkeys(f12["system"])) + " |")
        out.append("")
    if (t / "figure15.csv").exists():
        f15 = pd.read_csv(t / "figure15.csv")
        gains = [c for c in f15.columns if c.startswith("gain_")]
        out += ["### figure15", "", "Throughput gain over Sarathi (FA_Serial) against the P:D ratio, simulated.", "",
                "| P:D | " + " | ".join(c.removeprefix("gain_").removesuffix("_pct") for c in gains) + " |",
                "|---|" + "---|" * len(gains)]
        out += [f"| {int(r['pd_ratio'])} | " + " | ".join(f"{r[c]:+.1f}%" for c in gains) + " |" for _, r in f15.iterrows()]
        out.append("")
    if (t / "figure4.csv").exists():
        f4 = pd.read_csv(t / "figure4.csv")
        f4 = f4[f4["total_s"].notna()]
        ctx = sorted(f4["context"].unique())
        out += ["### figure4", "", "Attention share of one Llama-3-8B iteration (1K-token chunk, 60 decodes of the context), "
                f"{', '.join(sorted(set(map(str, f4['gpu_name']))))}.", "",
                "| backend | " + " | ".join(f"{c // 1024}K" for c in ctx) + " |", "|---|" + "---|" * len(ctx)]
        for b, g in f4.groupby("backend", sort=False):
            share = dict(zip(g["context"], g["attention_share_pct"]))
            out.append(f"| {b} | " + " | ".join(f"{share[c]:.0f}%" if c in share else "–" for c in ctx) + " |")
        out.append("")
    if (t / "table5.md").exists():
        body = (t / "table5.md").read_text().replace("\n### ", "\n#### ").replace("### ", "#### ", 1)
        out += ["### table5", "", body.rstrip(), ""]
    return out


def shown(path: Path) -> str:
    """``path`` as the reports name it: relative to the checkout when inside it."""
    path = Path(path)
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def render(names: list[str], tables: Path, studies: bool = False, serving: Path | None = None) -> str:
    tree = shown(Path(tables).parent)  # results/, or a GPU's own tree such as results/h200/
    if studies:
        out = ["# Tuning studies: results", "",
               "Generated by `python -m analysis.report --studies` (`make studies` or `make figures`) from "
               f"`{shown(tables)}/`; do not edit. The studies are `experiments/studies/<name>.yaml`; "
               "`make <name>` reruns one on a GPU, `make studies` all of them; "
               f"`{tree}/raw/<name>/MANIFEST.md` says where and when each raw file was measured.", "", LEGEND]
    else:
        out = ["# Results of the paper targets", "",
               f"Generated by `python -m analysis.report` (`make figures`, `make all`) from `{shown(tables)}/`; "
               f"do not edit. Tuning studies: `{tree}/STUDIES.md`. Where and when each raw file was measured: "
               f"`{tree}/raw/<exp>/MANIFEST.md`.", "", LEGEND]
    order = {n: i for i, n in enumerate(PAPER_ORDER)}
    for name in sorted(names, key=lambda n: (order.get(n, len(order)), n)):
        out += [f"## {name}", ""]
        if studies:
            doc = read_doc(name)
            desc = " ".join(str(doc.get("description", "")).split())
            rel = experiment_yaml(name).relative_to(ROOT)
            out += [f"{desc} (`{rel}`; `make {name}`)", ""]
        out += figure7_section(tables) if name == "figure7" else attention_section(name, tables)
        out.append("")
    if serving is not None:
        out += serving_section(serving)
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="experiments (their tables must exist)")
    p.add_argument("--tables", default="results/tables", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--studies", action="store_true", help="the tuning-studies report")
    p.add_argument("--serving", type=Path, default=None, help="the serving results' folder (its tables/)")
    a = p.parse_args(argv)
    changed = write_text_if_changed(a.out, render(a.names, a.tables, studies=a.studies, serving=a.serving))
    print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
