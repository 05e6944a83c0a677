"""Which of the paper's kernel-level claims hold on which GPU, read from each GPU tree's tables.

    python -m analysis.claims --out results/CLAIMS.md --csv results/CLAIMS.csv [TREE ...]

A TREE is a results folder with a ``tables/`` inside (default: ``results`` and every
``results/<gpu>/``). Each claim is one registered check (``@claim``): the paper's statement, the
paper's number (A100) and a function of a tree's tables that returns what was measured and whether
the claim holds, or None when the tree lacks the target's table. A check states its own rule in its
``rule`` text, so a reader sees why a number counts as holding. Adding a claim touches only this
file. The figure-11 grid re-run on another GPU at the H100's decode batches (study
figure11_h100_batches) is compared with the H100's rows batch for batch. Where a tree holds figure
11 re-timed with queue_ahead (studies figure11_queue_ahead and figure11_fusion_baselines, each a
subset of the methods timed in one lease), a figure-11 claim reads those tables instead of the
figure-11 rows, which carry host launch time in their short parts.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.atomic import write_text_if_changed
from analysis.report import RETIMED_FIGURE11, kept_rows, perfect_overlap_bound, shown, timing_modes
from kernels.catalogue import method_parts


@dataclass(frozen=True)
class Verdict:
    measured: str
    holds: bool | None  # None: measured, but the tree lacks what the rule needs


@dataclass(frozen=True)
class Claim:
    id: str
    target: str
    statement: str
    paper: str
    rule: str
    source: str  # the table (``tables/<source>.csv``) the check reads
    check: Callable[[pd.DataFrame], Verdict | None]
    retimed: tuple[str, ...] = ()  # tables that replace ``source`` where the tree holds them, each judged


F11_PEERS, F11_FUSIONS, F11_KEPT = RETIMED_FIGURE11


CLAIMS: list[Claim] = []


def claim(id: str, target: str, statement: str, paper: str, rule: str, source: str | None = None,
          retimed: tuple[str, ...] = ()):
    """Register ``fn(table) -> Verdict | None`` as the check of one paper claim; it is given the
    tree's ``tables/<source>.csv`` (default: the target's wide table) and not called without one.
    ``retimed`` names tables that replace the source in a tree that holds any of them: the check runs
    on each held one (returning None where a table lacks its columns) and the claim holds when it
    holds on every one."""
    def deco(fn):
        CLAIMS.append(Claim(id, target, statement, paper, rule, source or target, fn, tuple(retimed)))
        return fn
    return deco


def table(tables: Path, name: str) -> pd.DataFrame | None:
    path = Path(tables) / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def gpu_of(tables: Path) -> str | None:
    """The GPU (and SM count) of a tree, from the first table that names one."""
    for path in sorted(Path(tables).glob("*.csv")):
        head = pd.read_csv(path, nrows=1)
        if {"gpu_name", "sm_count"} <= set(head) and len(head):
            return f"{head['gpu_name'].iloc[0]} ({int(head['sm_count'].iloc[0])} SMs)"
    return None


# ----------------------------------------------------------------------------- figure 1

def _f1_median(t: pd.DataFrame, ncu: str, fallback: str, method: str) -> tuple[float, str]:
    """Median utilisation of ``method`` in figure 1: Nsight Compute's metric where profiled, else
    the useful bytes or FLOPs over the timed median."""
    col = f"ncu_{ncu}_{method}"
    if col in t and t[col].notna().any():
        return t[col].median(), "Nsight Compute"
    return t[f"{fallback}_{method}"].median(), "useful work over time"


def _f1_pair(t, ncu: str, fallback: str, methods: tuple[str, str]) -> Verdict:
    """Both kernels' median utilisation (percent) in figure 1; holds when both are below 10%."""
    (a, src), (b, _) = (_f1_median(t, ncu, fallback, m) for m in methods)
    if src != "Nsight Compute":
        # useful work leaves out what the hardware spends on padding: not the paper's measure
        return Verdict(f"FA {a:.1f}%, FI {b:.1f}% ({src}; no Nsight Compute profile, not judged)", None)
    return Verdict(f"FA {a:.1f}%, FI {b:.1f}% ({src})", bool(a < 10 and b < 10))


@claim("F1-prefill-bw", "figure1", "Prefill attention leaves HBM bandwidth idle",
       "often < 5% of DRAM bandwidth", "median DRAM throughput of FA_prefill and of FI_prefill_auto below 10%")
def _f1_prefill(t):
    return _f1_pair(t, "dram__throughput", "achieved_memory_pct", ("FA_prefill", "FI_prefill_auto"))


@claim("F1-decode-compute", "figure1", "Decode attention leaves the tensor cores idle",
       "< 10% of compute", "median tensor-pipe activity of FA_decode and of FI_decode below 10%")
def _f1_decode(t):
    return _f1_pair(t, "sm__pipe_tensor_op_hmma_cycles_active", "achieved_compute_pct", ("FA_decode", "FI_decode"))


@claim("F1-hybrid", "figure1", "POD is faster than both serial baselines on the hybrid batches of Table 1",
       "faster than FA_Serial and FI_Serial on C0-C2",
       "POD below FA_Serial and FI_Serial on every hybrid batch")
def _f1_hybrid(t):
    h = t[(t["prefill_len"] > 0) & (t["decode_batch"] > 0)].dropna(subset=["ms_POD", "ms_FA_Serial", "ms_FI_Serial"])
    wins = (h["ms_POD"] < h[["ms_FA_Serial", "ms_FI_Serial"]].min(axis=1))
    sp = h["ms_FA_Serial"] / h["ms_POD"]
    return Verdict(f"{int(wins.sum())}/{len(h)} batches; speedup over FA_Serial {sp.min():.2f}-{sp.max():.2f}x",
                   bool(len(h) and wins.all()))


# ----------------------------------------------------------------------------- figure 6

@claim("F6-best", "figure6", "POD beats CUDA streams and HFuse-style fusion on every chunk of a prompt",
       "faster than FA_Streams and FA_HFuse, by up to 29% over the next best",
       "POD below FA_Serial, FA_Streams and HFuse on every chunk")
def _f6(t):
    rivals = t[["ms_FA_Serial", "ms_FA_Streams", "ms_HFuse"]].min(axis=1)
    gain = rivals / t["ms_POD"] - 1
    return Verdict(f"{int((gain > 0).sum())}/{len(t)} chunks; up to {pct(gain.max())} over the next best",
                   bool((gain > 0).all()))


@claim("F6-straggler", "figure6", "HFuse loses ground on the later, prefill-dominated chunks (straggler effect)",
       "its gain degrades quickly in later chunks",
       "HFuse's median speedup over FA_Serial on the last quarter of chunks below that on the first quarter")
def _f6_straggler(t):
    s = (t["ms_FA_Serial"] / t["ms_HFuse"]).groupby(t["chunk_idx"]).median().sort_index()
    q = max(1, len(s) // 4)
    first, last = s.iloc[:q].median(), s.iloc[-q:].median()
    return Verdict(f"first quarter {first:.2f}x, last quarter {last:.2f}x", bool(last < first))


# ----------------------------------------------------------------------------- figure 7

def _fig7(t) -> pd.Series:
    return t.set_index("variant")["mean_speedup_over_serial"]


@claim("F7-cta", "figure7", "CTA-parallel fusion gains little over serial: nothing puts the two ops on one SM",
       "mean +8% over serial", "cta_parallel's mean speedup over serial below 1.15", source="figure7_summary")
def _f7_cta(t):
    s = _fig7(t)
    return Verdict(f"mean {s['cta_parallel']:.3f}x", bool(s["cta_parallel"] < 1.15))


@claim("F7-intra", "figure7", "Intra-thread fusion beats serial and CTA-parallel execution",
       "by 19% and 10% on average", "intra_thread's mean speedup above serial's and cta_parallel's",
       source="figure7_summary")
def _f7_intra(t):
    s = _fig7(t)
    return Verdict(f"{s['intra_thread']:.3f}x vs serial 1, cta_parallel {s['cta_parallel']:.3f}x",
                   bool(s["intra_thread"] > max(1.0, s["cta_parallel"])))


@claim("F7-sm-aware", "figure7", "SM-aware CTA scheduling is the best way to fuse", "best of all variants",
       "sm_aware_cta has the highest mean speedup over serial", source="figure7_summary")
def _f7_best(t):
    s = _fig7(t)
    return Verdict(f"sm_aware_cta {s['sm_aware_cta']:.3f}x, best {s.idxmax()} {s.max():.3f}x",
                   bool(s.idxmax() == "sm_aware_cta"))


# ----------------------------------------------------------------------------- figure 10

@claim("F10-compute", "figure10",
       "Decode tensor-core use grows with the query tile, so small tiles free the tensor cores",
       "~70% at a 128-row tile, ~10% at 16 rows",
       "Nsight Compute tensor-pipe activity of the 16-row tile below half of the 128-row tile's at every batch")
def _f10_compute(t):
    c16, c128 = "ncu_sm__pipe_tensor_op_hmma_cycles_active_OURS_decode_q16", \
        "ncu_sm__pipe_tensor_op_hmma_cycles_active_OURS_decode_q128"
    if c16 not in t or t[c16].isna().all():
        return Verdict("no Nsight Compute profile in this tree", None)
    return Verdict(f"16 rows {t[c16].median():.1f}%, 128 rows {t[c128].median():.1f}%",
                   bool((t[c16] < 0.5 * t[c128]).all()))


@claim("F10-time", "figure10", "A 16-row decode tile costs no time against larger tiles",
       "no adverse impact at large batch sizes",
       "at the largest batch, the 16-row tile within 5% of the fastest tile")
def _f10_time(t):
    big = t.loc[t["decode_batch"].idxmax()]
    tiles = {c: big[c] for c in t if c.startswith("ms_OURS_decode_q")}
    r = big["ms_OURS_decode_q16"] / min(tiles.values())
    return Verdict(f"batch {int(big['decode_batch'])}: 16 rows at {r:.3f}x the fastest tile", bool(r <= 1.05))


# ----------------------------------------------------------------------------- figure 11

@claim("F11-never-slower", "figure11", "POD never under-performs serial execution",
       "never slower than FA_Serial", "POD's smallest speedup over FA_Serial on the kept batches is at least 1",
       retimed=(F11_PEERS, F11_FUSIONS, F11_KEPT))
def _f11_never(t):
    if not {"ms_FA_Serial", "ms_POD"} <= set(t):
        return None
    k = kept_rows(t)
    s = (k["ms_FA_Serial"] / k["ms_POD"]).dropna()
    return Verdict(f"min {s.min():.3f}x over {len(s)} kept batches", bool(s.min() >= 1.0))


@claim("F11-mean", "figure11", "POD has the highest mean speedup over FA_Serial of all methods",
       "mean 1.28x, peak 1.75x", "POD's mean speedup over FA_Serial is the highest of the whole-batch methods",
       retimed=(F11_PEERS, F11_FUSIONS, F11_KEPT))
def _f11_mean(t):
    if not {"ms_FA_Serial", "ms_POD"} <= set(t):
        return None
    k = kept_rows(t)
    whole = [c[3:] for c in k if c.startswith("ms_") and len(method_parts(c[3:]) or ()) != 1
             and c[3:] != "FA_Serial"]
    means = {m: (k["ms_FA_Serial"] / k[f"ms_{m}"]).mean() for m in whole}
    best = max(means, key=means.get)
    pod = k["ms_FA_Serial"] / k["ms_POD"]
    return Verdict(f"POD mean {pod.mean():.3f}x, peak {pod.max():.3f}x; highest: {best} {means[best]:.3f}x",
                   bool(best == "POD"))


@claim("F11-near-peak", "figure11", "POD comes within 10% of the perfect-overlap time on a good share of batches",
       "18% of batches", "share of kept batches with POD at most 1.1x its perfect-overlap bound at least 18%",
       retimed=(F11_PEERS, F11_KEPT))
def _f11_peak(t):
    k = kept_rows(t)
    r = (k["ms_POD"] / perfect_overlap_bound(k)).dropna()
    share = (r <= 1.1).mean()
    return Verdict(f"{pct(share)} of {len(r)} kept batches", bool(share >= 0.18))


@claim("F11-hfuse", "figure11", "HFuse-style fusion is the strongest baseline, yet slower than serial on some batches",
       "median +11%, up to 16% slower", "HFuse's median speedup over FA_Serial above 1 and its minimum below 1",
       retimed=(F11_FUSIONS,))
def _f11_hfuse(t):
    k = kept_rows(t)
    if "ms_HFuse" not in k:
        return None
    s = (k["ms_FA_Serial"] / k["ms_HFuse"]).dropna()
    return Verdict(f"median {s.median():.3f}x, min {s.min():.3f}x", bool(s.median() > 1 and s.min() < 1))


@claim("F11-streams", "figure11", "CUDA streams give a limited speedup", "limited (no SM-level overlap)",
       "FA_Streams' median speedup over FA_Serial below 1.1", retimed=(F11_FUSIONS,))
def _f11_streams(t):
    k = kept_rows(t)
    if "ms_FA_Streams" not in k:
        return None
    s = (k["ms_FA_Serial"] / k["ms_FA_Streams"]).dropna()
    return Verdict(f"median {s.median():.3f}x", bool(s.median() < 1.1))


@claim("F11-fi-serial", "figure11", "FlashInfer's serial kernels are on par with FlashAttention's",
       "mostly on par (FlashInfer's prefill somewhat slower)",
       "FI_Serial's median speedup over FA_Serial within 0.9-1.1", retimed=(F11_PEERS, F11_KEPT))
def _f11_fi(t):
    if "ms_FI_Serial" not in t:
        return None
    k = kept_rows(t)
    s = (k["ms_FA_Serial"] / k["ms_FI_Serial"]).dropna()
    return Verdict(f"median {s.median():.3f}x", bool(0.9 <= s.median() <= 1.1))


@claim("F11-fi-batched", "figure11",
       "FlashInfer's batched kernel loses at long contexts (decodes padded to prefill tiles)",
       "up to 40% slower", "the FI_Batched method's smallest speedup over FA_Serial below 1", retimed=(F11_FUSIONS,))
def _f11_batched(t):
    k = kept_rows(t)
    cols = [c for c in ("ms_FI_Batched_fa2", "ms_FI_Batched_auto") if c in k and k[c].notna().any()]
    if not cols:
        return None
    s = (k["ms_FA_Serial"] / k[cols[0]]).dropna()
    return Verdict(f"{cols[0][3:]}: min {s.min():.3f}x, median {s.median():.3f}x", bool(s.min() < 1))


# ----------------------------------------------------------------------------- figures 13, 14, table 7

@claim("F13-ctas", "figure13", "2 CTAs per SM suit long (prefill-heavy) contexts, 4 CTAs per SM short ones",
       "2 CTAs better at long contexts, 4 at short", "POD_2cta faster on most batch sizes at the longest context "
       "and POD_4cta on most at the shortest")
def _f13(t):
    ctx = t["prefill_len"]
    long, short = t[ctx == ctx.max()], t[ctx == ctx.min()]
    two = (long["ms_POD_2cta"] < long["ms_POD_4cta"]).mean()
    four = (short["ms_POD_4cta"] < short["ms_POD_2cta"]).mean()
    return Verdict(f"{int(ctx.max())} tokens: 2 CTAs win {pct(two)}; {int(ctx.min())} tokens: 4 CTAs win {pct(four)}",
                   bool(two > 0.5 and four > 0.5))


@claim("F14-policy", "figure14", "Proportional CTA assignment beats 50:50 as the decode batch grows",
       "up to 14% better",
       "at each model's largest decode batch, proportional faster than 50:50 for 2 and 4 CTAs per SM")
def _f14(t):
    big = t.loc[t.groupby("model")["decode_batch"].idxmax()]
    ok, gains = [], []
    for n in (2, 4):
        g = big[f"ms_POD_5050_{n}cta"] / big[f"ms_POD_proportional_{n}cta"] - 1
        ok.append(bool((g > 0).all()))
        gains.append(g.max())
    all_gain = (t[[f"ms_POD_5050_{n}cta" for n in (2, 4)]].to_numpy() /
                t[[f"ms_POD_proportional_{n}cta" for n in (2, 4)]].to_numpy() - 1).max()
    return Verdict(f"largest batches: up to {pct(max(gains))}; best anywhere {pct(all_gain)}", all(ok))


@claim("T7-limited", "table7", "Limiting prefill splits makes POD faster than the vanilla FlashDecoding split",
       "0.74-0.75x of FA_Serial vs 0.86-0.87x", "POD_limited_split below POD_vanilla_split on all four chunks")
def _t7(t):
    lim, van = t["ms_POD_limited_split"] / t["ms_FA_Serial"], t["ms_POD_vanilla_split"] / t["ms_FA_Serial"]
    return Verdict(f"limited {lim.min():.2f}-{lim.max():.2f}x, vanilla {van.min():.2f}-{van.max():.2f}x of FA_Serial",
                   bool((lim < van).all()))


@claim("T7-double", "table7", "Limiting prefill splits nearly doubles POD's speedup over FA_Serial",
       "gain 0.35 vs 0.16 (2.1x)", "mean gain (speedup - 1) of the limited split at least 1.5x the vanilla split's")
def _t7_double(t):
    g_lim = (t["ms_FA_Serial"] / t["ms_POD_limited_split"] - 1).mean()
    g_van = (t["ms_FA_Serial"] / t["ms_POD_vanilla_split"] - 1).mean()
    ratio = g_lim / g_van if g_van > 0 else float("inf")
    return Verdict(f"gain {g_lim:.3f} vs {g_van:.3f} ({ratio:.2f}x)", bool(ratio >= 1.5))


# ----------------------------------------------------------------------------- reading the trees

def default_trees(root: Path) -> list[Path]:
    """``root`` (the H100's shipped tree) and every GPU tree ``root/<gpu>/`` (one with ``raw/`` and
    ``tables/``, as the Makefile's GPU_TREES)."""
    return [root] + sorted(p.parent for p in root.glob("*/raw") if (p.parent / "tables").is_dir())


def judge(c: Claim, tables: Path) -> tuple[Verdict | None, str | None, str | None]:
    """A claim on one tree: (verdict, the tables it read, how their rows were timed as
    "table: modes; ..."); the claim's re-timed tables where the tree holds any, else its source.
    None for each part it could not read."""
    held = [(n, t) for n in c.retimed if (t := table(tables, n)) is not None]
    if not held:
        t = table(tables, c.source)
        return (None, None, None) if t is None else (c.check(t), c.source, f"{c.source}: {timing_modes(t)}")
    judged = [(n, v, t) for n, t in held if (v := c.check(t)) is not None]
    if not judged:
        return None, None, None
    verdict = Verdict("; ".join(f"{v.measured} (`{n}`)" for n, v, _ in judged),
                      None if any(v.holds is None for _, v, _ in judged) else all(v.holds for _, v, _ in judged))
    return verdict, ", ".join(n for n, _, _ in judged), "; ".join(f"{n}: {timing_modes(t)}" for n, _, t in judged)


def evaluate(trees: list[Path]) -> pd.DataFrame:
    """One row per (claim, tree): the claim's texts, the tree's GPU, what was measured, whether it
    holds, the tables it read and how their rows were timed."""
    rows = []
    for tree in trees:
        tables = tree / "tables"
        gpu = gpu_of(tables)
        for c in CLAIMS:
            v, read, timing = judge(c, tables)
            rows.append({"claim": c.id, "target": c.target, "statement": c.statement, "paper": c.paper,
                         "rule": c.rule, "tree": shown(tree), "gpu": gpu,
                         "measured": None if v is None else v.measured,
                         "holds": None if v is None else v.holds,
                         "source": read, "timing": timing})
    return pd.DataFrame(rows)


def same_batches(h100: Path, other: Path, study: str = "figure11_h100_batches") -> pd.DataFrame:
    """Figure 11 batch for batch: the H100's rows (``h100/tables/figure11.csv``) against another
    GPU's run of the same grid at the H100's decode batches (``other/tables/<study>.csv``). Per method
    timed on both: batches, median and range of the H100's time over the other GPU's, and for POD
    the share of batches at or below the best peer on each GPU."""
    a, b = table(h100 / "tables", "figure11"), table(other / "tables", study)
    if a is None or b is None:
        return pd.DataFrame()
    j = a.merge(b, on="row_key", suffixes=("_a", "_b"))
    kept = j["kept_a"].astype(bool)
    out = []
    for m in sorted({c[3:] for c in a if c.startswith("ms_")} & {c[3:] for c in b if c.startswith("ms_")}):
        r = (j[f"ms_{m}_a"] / j[f"ms_{m}_b"])[kept].dropna()
        if len(r):
            out.append({"method": m, "batches": len(r), "median_ratio": r.median(), "p10_ratio": r.quantile(0.1),
                        "p90_ratio": r.quantile(0.9)})
    df = pd.DataFrame(out)
    if {"ms_POD_a", "best_peer_ms_a", "ms_POD_b", "best_peer_ms_b"} <= set(j):
        k = j[kept]
        df.attrs["pod_at_or_below_best_peer"] = ((k["ms_POD_a"] <= k["best_peer_ms_a"]).mean(),
                                                 (k["ms_POD_b"] <= k["best_peer_ms_b"]).mean(), len(k))
        df.attrs["kept_on_other"] = (int(j["kept_b"].astype(bool).sum()), len(j))
    return df


def mark(holds) -> str:
    return "not judged" if holds is None or pd.isna(holds) else ("holds" if holds else "does not hold")


def render(claims: pd.DataFrame, pairs: list[tuple[Path, Path, pd.DataFrame]]) -> str:
    trees = list(dict.fromkeys(claims["tree"]))
    named = claims.dropna(subset=["gpu"]).groupby("tree", sort=False)["gpu"].first()
    gpus = {t: named.get(t, t) for t in trees}
    out = ["# The paper's kernel claims, GPU by GPU", "",
           "Generated by `python -m analysis.claims` (`make figures`) from each tree's `tables/`; do not edit. "
           "The paper measured an A100 (108 SMs); each column is one GPU tree of this artifact. A claim is "
           "checked by the rule beside it (analysis/claims.py), on the rows that tree holds: `not run` "
           "where the tree lacks the target, `not judged` where it lacks what the rule needs.", ""]
    head = "| target | claim | paper (A100) | rule | " + " | ".join(f"{gpus[t]} (`{t}`)" for t in trees) + " |"
    out += [head, "|" + "---|" * (4 + len(trees))]
    for cid in dict.fromkeys(claims["claim"]):
        rows = claims[claims["claim"] == cid].set_index("tree")
        first = rows.iloc[0]
        cells = []
        for t in trees:
            r = rows.loc[t]
            cells.append("not run" if r["measured"] is None or pd.isna(r["measured"])
                         else f"**{mark(r['holds'])}**: {r['measured']}")
        out.append(f"| {first['target']} | {first['statement']} | {first['paper']} | {first['rule']} | "
                   + " | ".join(cells) + " |")
    held = claims.dropna(subset=["measured"])
    out += ["", "Claims that hold, per tree: " + "; ".join(
        f"{gpus[t]}: {int((g['holds'] == True).sum())} of {int(g['holds'].notna().sum())}"  # noqa: E712
        for t, g in held.groupby("tree", sort=False)) + "."]
    f11 = claims[(claims["target"] == "figure11") & claims["timing"].notna()]
    if len(f11):
        # short prefill parts timed without queue_ahead carry host launch time, which moves these verdicts
        read = {t: "; ".join(dict.fromkeys(each for timing in g["timing"] for each in timing.split("; ")))
                for t, g in f11.groupby("tree", sort=False)}
        out += ["", "The tables each tree's figure-11 claims read, and how their rows were timed (the CSV's "
                "`source` and `timing` columns have it for every claim): "
                + "; ".join(f"{gpus[t]}: {text}" for t, text in read.items()) + "."]
    for h100, other, df in pairs:
        if df.empty:
            continue
        at = df.attrs.get("pod_at_or_below_best_peer")
        kept = df.attrs.get("kept_on_other")
        out += ["", f"## Figure 11 batch for batch: `{shown(h100)}` against `{shown(other)}`", "",
                f"The same {int(df['batches'].max())} kept batches (row keys of the H100's figure-11 rows, kept by its "
                f"filter), timed on both GPUs: per method, the H100's time over the other GPU's (above 1: the other "
                f"GPU is faster).", ""]
        if at:
            out += [f"POD at or below the best peer on these batches: {pct(at[0])} on the H100, {pct(at[1])} on the "
                    f"other GPU ({at[2]} batches). The other GPU's own filter keeps {kept[0]} of the {kept[1]} "
                    f"batches.",
                    ""]
        out += ["| method | batches | median | p10 | p90 |", "|---|---|---|---|---|"]
        for r in df.itertuples():
            out.append(f"| {r.method} | {r.batches} | {r.median_ratio:.3f} | {r.p10_ratio:.3f} | {r.p90_ratio:.3f} |")
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", type=Path, help="results trees (default: results and results/<gpu>/)")
    p.add_argument("--root", type=Path, default=Path("results"), help="the H100's tree (the default trees' root)")
    p.add_argument("--out", type=Path, required=True, help="markdown report")
    p.add_argument("--csv", type=Path, help="the claims table as CSV")
    a = p.parse_args(argv)
    trees = a.trees or default_trees(a.root)
    claims = evaluate(trees)
    pairs = [(a.root, t, same_batches(a.root, t)) for t in trees if t != a.root]
    changed = write_text_if_changed(a.out, render(claims, pairs))
    if a.csv:
        write_text_if_changed(a.csv, claims.to_csv(index=False))
    print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
