"""The batches of a tuning study, chosen from the figure-11 table by a rule instead of by hand.

    python -m experiments.select NAME            # print the configs: block the rule gives
    python -m experiments.select NAME --check    # exit 1 unless experiments/studies/NAME.yaml lists exactly those
    python -m experiments.select NAME --write    # rewrite that YAML's configs: block from the rule
    python -m experiments.select --list          # every study: generated (by which rule) or recorded

Every study YAML with a configs: block is either generated (``SELECTIONS``: a rule that reproduces
its configs row for row) or recorded (``RECORDED``: the list as run, with a note on what it was
drawn from and why no rule regenerates it). tests/test_select.py checks that each study is one of
the two and that every rule still gives its YAML.

A rule is one part or a list of ``parts`` whose rows are concatenated (a row already chosen by an
earlier part is not repeated). A part reads ``results/tables/figure11.csv``, or with ``table`` the
figure-11 table as committed at that commit (read from git: the part depends on timings that have
been measured again since), or with ``path`` another table file of the repository (e.g. a GPU
tree's figure-11 table), and keeps the rows that pass all of its filters:

- ``kept``: ``True``: the batches that table's figure-11 filter keeps (each FlashAttention-2 part at
  least 20% of ``FA_Serial``); ``"as_run"``: the batches the committed table's filter kept when the
  studies of 8cf806a..f46232e were drawn (``KEPT_AS_RUN_ONLY`` added, ``KEPT_NOW_ONLY`` removed:
  the FlashAttention-2 part times that decide the filter were measured again on the same-machine
  lease of fee758d);
- ``dominance_below`` / ``dominance_from`` / ``dominance_to``: prefill FLOPs over machine balance
  (295 FLOP/byte, H100 dense fp16 over HBM3) x decode bytes, < / >= / <= the value: the quantity
  POD's automatic CTAs-per-SM rule compares with its threshold (``PREFILL_DOMINANCE`` in
  kernels/pod/plan.py);
- ``slower`` / ``not_slower``: ``(A, B)``: method A's time above B's (or not) in that table;
  ``ratio_from``: ``(A, B, x)``: A's time over B's at least x;
- ``split_differs``: ``(X, Y, d)``: POD's plan (kernels/pod/plan.py, the row's SM count) gives the
  prefill a different split with ``prefill_split`` X than with Y, at 2 CTAs per SM where the
  dominance is at least d and 4 below it (the automatic rule of then, pinned here so that a later
  automatic rule does not change the selection);
- ``add`` / ``drop``: row keys added after / removed before the filters (listed, not guessed);
- rows an earlier part chose are left out before anything is drawn;
- ``top``: ``(column, n)``: the n rows with the largest values of the column;
- ``sample``: ``(n, seed)``: ``DataFrame.sample(n, random_state=seed)`` of the rows left, in table
  order; ``strata``: ``dict(by=column, edges=[...], n=k, seed=s)``: k rows sampled that way from
  each bin ``[edges[i], edges[i+1])`` of the column, bin after bin (k may be a list, one per bin);
- ``study``: instead of a table, the configs of another study YAML, in its order; ``configs``:
  configs listed as they are (batches no table has, e.g. a prefill alone);
- ``order``: the columns the part's rows are sorted by (without it: the order drawn).

Columns derived from the times, for ``top``, ``strata`` and comments: ``pod_over_serial`` (POD over
OURS_Serial), ``prefill_share`` (OURS_prefill over OURS_prefill + OURS_decode), ``fi_prefill_share``
(the same of FI_prefill_auto and FI_decode). A rule's own ``order`` sorts the whole concatenation;
its ``comment`` (a format string over a row's columns) is written after each config.

The YAML's configs: block is what the runner reads (the experiment schema has no select: field);
this module is how it was made.
"""
from __future__ import annotations

import argparse
import functools
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "results" / "tables" / "figure11.csv"
STUDIES = ROOT / "experiments" / "studies"
MACHINE_BALANCE = 295.0  # FLOP per byte: 989 TFLOP/s dense fp16 over 3.35 TB/s (H100 SXM)
CONFIG_FIELDS = ("model", "prefill_len", "prefill_kv_len", "decode_batch", "decode_ctx")
BY_BATCH = ["model", "prefill_len", "prefill_kv_len", "decode_batch", "decode_ctx"]
BY_CONTEXT = ["model", "prefill_len", "prefill_kv_len", "decode_ctx", "decode_batch"]

# Kept by the figure-11 filter from 8cf806a to f46232e (1448 kept batches then, 1445 in the committed
# table): the FA_prefill / FA_decode lines that decide the filter were timed again on the
# same-machine lease (fee758d).
KEPT_AS_RUN_ONLY = [
    "llama-3-8b-tp2|float16|p1024@5120|d45x20480|ps16", "yi-6b-tp4|float16|p2048@6144|d208x20480|ps16",
    "yi-6b|float16|p512@8192|d72x12288|ps16", "yi-6b-tp4|float16|p2048@8192|d219x20480|ps16",
    "llama-3-8b|float16|p512@6656|d51x8192|ps16", "yi-6b-tp2|float16|p512@13824|d125x16384|ps16",
    "llama-3-8b|float16|p512@4608|d20x20480|ps16", "llama-3-8b-tp2|float16|p1024@8192|d86x12288|ps16",
    "yi-6b-tp2|float16|p2048@4096|d264x8192|ps16", "yi-6b-tp4|float16|p2048@8192|d366x12288|ps16",
    "llama-3-8b|float16|p1024@3072|d23x20480|ps16", "yi-6b|float16|p512@6656|d54x16384|ps16",
    "llama-3-8b-tp2|float16|p512@12800|d57x16384|ps16", "llama-3-8b|float16|p512@8192|d36x12288|ps16",
    "llama-3-8b-tp4|float16|p512@15360|d102x20480|ps16", "llama-3-8b-tp4|float16|p2048@8192|d171x12288|ps16",
    "yi-6b-tp2|float16|p1024@8192|d167x12288|ps16",
]
KEPT_NOW_ONLY = [
    "llama-3-8b-tp2|float16|p2048@4096|d129x8192|ps16", "yi-6b-tp2|float16|p1024@8192|d176x12288|ps16",
    "yi-6b-tp4|float16|p2048@6144|d197x20480|ps16", "llama-3-8b-tp2|float16|p512@10752|d48x20480|ps16",
    "llama-3-8b|float16|p512@6656|d28x16384|ps16", "llama-3-8b-tp2|float16|p512@11776|d51x20480|ps16",
    "llama-3-8b-tp4|float16|p1024@13312|d128x16384|ps16", "yi-6b-tp4|float16|p1024@17408|d219x20480|ps16",
    "yi-6b|float16|p512@8192|d81x12288|ps16", "yi-6b-tp2|float16|p512@11264|d94x20480|ps16",
    "yi-6b-tp2|float16|p1024@6144|d105x20480|ps16", "llama-3-8b|float16|p2048@2048|d109x4096|ps16",
    "yi-6b|float16|p512@6656|d61x16384|ps16", "yi-6b-tp2|float16|p512@12288|d105x20480|ps16",
]

# the figure-11 table of the first H100 sweep with HFuse (7d794c2): POD, OURS_Serial and the peers'
# parts as the studies of fecdba1..f2ff465 saw them
FIRST_SWEEP = "7d794c2a6495ee96facb5074d89848e19cc5b452"
# the batches where the CTAs-per-SM rule of 40a4baa (2 CTAs/SM from dominance 0.4) differs from the
# one before it (2 CTAs/SM above dominance 3.0): the 180 batches that run with 2 CTAs per SM
_TWO_CTAS = dict(dominance_from=0.4, dominance_to=3.0, order=BY_BATCH)
# 60 kept batches with 4 CTAs per SM (threshold 0.4), seed 0
_FOUR_CTAS_SAMPLE = dict(kept="as_run", dominance_below=0.4, sample=(60, 0), order=BY_BATCH)

SELECTIONS = {
    # every kept batch where the CTAs-per-SM rule of then (threshold 0.4) picked 4 CTAs per SM
    "pod_ctas_ds3": dict(kept="as_run", dominance_below=0.4, order=BY_BATCH),
    # every kept batch where POD runs 4 CTAs per SM with the rule's threshold 0.25 (the default since)
    "pod_policy_cps4": dict(kept=True, dominance_below=0.25, order=BY_CONTEXT),
    "pod_ctas_rule": _TWO_CTAS,
    "pod_decode_pipeline": dict(parts=[_TWO_CTAS, _FOUR_CTAS_SAMPLE]),
    "pod_decode_blocks": dict(parts=[
        _FOUR_CTAS_SAMPLE,
        # kept 4-CTA batches where POD was slower than OURS_Serial in the table of then
        dict(table="c1931fb4d15bdc82f9fcc26e752b93028f843cb0", kept=True, dominance_below=0.4,
             slower=("POD", "OURS_Serial"), order=BY_BATCH),
        dict(kept="as_run", dominance_from=0.4, sample=(40, 0), order=BY_BATCH),
        dict(study="pod_decode_heavy"),
    ]),
    "pod_binding": dict(parts=[
        # the 19 kept batches where POD was slower than OURS_Serial in the table of then
        dict(table="d12b506beb4b59b336a7dd3f203b744ae90c3fac", kept=True, slower=("POD", "OURS_Serial"),
             order=["decode_ctx"]),
        # 5 of the other kept batches from each band of our prefill's share of our serial parts
        dict(table="d12b506beb4b59b336a7dd3f203b744ae90c3fac", kept=True, not_slower=("POD", "OURS_Serial"),
             strata=dict(by="prefill_share", edges=[0, 0.2, 0.3, 0.4, 0.5, 1.01], n=5, seed=7)),
    ], comment="POD/OURS_Serial {pod_over_serial:.3f}, prefill share {prefill_share:.2f}"),
    "pod_decode_dominant": dict(parts=[
        dict(dominance_below=0.08, sample=(400, 0)),
        # kept decode-dominated batches where POD was slower than OURS_Serial in the table of then
        dict(table="f46232e1bf4aa8725cad547592e58d00f61c733c", kept=True, dominance_below=0.08,
             slower=("POD", "OURS_Serial")),
    ], order=BY_CONTEXT),
    "figure11_same_machine": dict(kept="as_run", sample=(400, 0), order=BY_CONTEXT),
    "pod_split_kept": dict(kept="as_run", split_differs=("limited", "two_waves", 0.25),
                           order=BY_CONTEXT),
    # kept batches where POD took at least 0.97x OURS_Serial in the first figure-11 sweep, table order
    "pod_close_calls": dict(table=FIRST_SWEEP, kept=True, ratio_from=("POD", "OURS_Serial", 0.97)),
    "pod_tiles": dict(parts=[
        # the six kept batches where POD was slowest against OURS_Serial (pointer loads)
        dict(table=FIRST_SWEEP, kept=True, top=("pod_over_serial", 6)),
        # 5 of the other kept batches from each band of FlashInfer's prefill share
        dict(table=FIRST_SWEEP, kept=True,
             strata=dict(by="fi_prefill_share", edges=[0, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.01], n=5, seed=1)),
        # two large prefills alone, for the TFLOP/s rate (no figure-11 row has no decodes)
        dict(configs=[dict(model="llama-3-8b-tp2", prefill_len=12288, prefill_kv_len=12288, decode_batch=0),
                      dict(model="llama-3-8b", prefill_len=2048, prefill_kv_len=20480, decode_batch=0)]),
    ]),
    "pod_decode_stages": dict(study="pod_decode_tiles"),
    # every batch the H200's figure-11 grid (timed with queue_ahead) kept, in context order
    "figure11_h200_kept": dict(path="results/h200/tables/figure11_queue_ahead.csv", kept=True, order=BY_CONTEXT),
}

# Studies whose configs are the list as run: no rule over a committed table regenerates them.
RECORDED = {
    "baselines_check": "three hand-picked batches: the paper's C0 and two odd shapes, not from a table",
    "pod_check": "hand-picked odd shapes and the paper's C0/C1/C2 batches, not from a table",
    "hopper_check": "hand-picked odd shapes and a few figure-11 shapes, not from a table",
    "hopper_prefill_rate": "prefill-only figure-11 chunks listed by rule of thumb (first chunk, and the "
                           "chunks ending at 8K and 16K of context) for three head layouts, not from a table",
    "hopper_rate": "five hand-picked figure-11 shapes (prefill-only, decode-only and hybrid)",
    "hfuse_check": "hand-picked odd shapes and the paper's C0 and a yi-6b batch, not from a table",
    "pod_decode_heavy": "four decode-dominated figure-11 batches picked by hand",
    "pod_prefill_heavy": "four batches of pod_close_calls where POD lost, picked by hand (not the four "
                         "slowest of its raw file)",
    "pod_trailing_ncu": "two kept H200 figure-11 batches where FlashInfer's fa3 prefill is a large share "
                        "of FI_Serial (results/h200/tables/figure11.csv), picked by hand",
    "pod_timeline": "three batches of pod_prefill_heavy and one more prefill-heavy batch, picked by hand",
    "pod_decode_tiles": "20 kept batches sampled across prefill shares; the first 14 are 7 per band "
                        "[0, 0.2) and [0.2, 0.3) of FlashInfer's prefill share in the table of 7d794c2 "
                        "(DataFrame.sample, seed 3), the last 6 (share 0.3 and above) match no seeded "
                        "draw tried, and the sampling code was not kept",
}


class TableUnavailable(RuntimeError):
    """The figure-11 table of a past commit cannot be read (no git history here)."""


def prefill_dominance(row) -> float:
    """Prefill FLOPs over (machine balance x decode bytes) of one table row (inf without decodes)."""
    from kernels.workload import BatchSpec

    spec = _spec(row, BatchSpec)
    decode_bytes = spec.bytes_moved()["decode"] if spec.has_decode else 0
    return spec.flops()["prefill"] / (MACHINE_BALANCE * decode_bytes) if decode_bytes else float("inf")


def _spec(row, batch_spec):
    from kernels.workload import ModelShape

    model = ModelShape(name=row.model, q_heads=int(row.q_heads), kv_heads=int(row.kv_heads),
                       head_dim=int(row.head_dim))
    return batch_spec(model=model, dtype=row.dtype, prefill_len=int(row.prefill_len),
                      prefill_kv_len=int(row.prefill_kv_len), decode_batch=int(row.decode_batch),
                      decode_ctx=int(row.decode_ctx), page_size=int(row.page_size))


def split_differs(row, a: str, b: str, two_ctas_from: float) -> bool:
    """Whether POD's plan splits the row's prefill differently with prefill_split ``a`` and ``b``,
    at 2 CTAs per SM where the row's prefill dominance is at least ``two_ctas_from``, else 4."""
    from kernels.pod.plan import MODE_POD, PodConfig, make_plan
    from kernels.workload import BatchSpec

    spec = _spec(row, BatchSpec)
    if not spec.has_prefill:
        return False
    cps = 2 if prefill_dominance(row) >= two_ctas_from else 4
    plans = [make_plan(spec, MODE_POD, int(row.sm_count), PodConfig(ctas_per_sm=cps, prefill_split=s))
             for s in (a, b)]
    return plans[0].n_splits_p != plans[1].n_splits_p


@functools.lru_cache(maxsize=None)
def _committed_table(commit: str) -> pd.DataFrame:
    rel = TABLE.relative_to(ROOT).as_posix()
    try:
        text = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise TableUnavailable(f"figure-11 table of {commit[:7]}: {getattr(e, 'stderr', '') or e}") from e
    return pd.read_csv(io.StringIO(text))


def figure11_table(commit: str | None = None) -> pd.DataFrame:
    """The figure-11 table: the committed file, or (``commit``) the one committed at that commit."""
    return pd.read_csv(TABLE) if commit is None else _committed_table(commit).copy()


def _key(config: dict) -> tuple:
    return tuple(str(config.get(f, "")) for f in CONFIG_FIELDS)


def _part_rows(part: dict, table: pd.DataFrame | None, chosen: set) -> pd.DataFrame:
    if "path" in part:
        t = pd.read_csv(ROOT / part["path"])
    elif "table" in part:
        t = figure11_table(part["table"])
    else:
        t = pd.read_csv(TABLE) if table is None else table
    t = _derived(t)
    keep = pd.Series(True, index=t.index)
    keep &= ~t["row_key"].isin(part.get("drop", []))
    if part.get("kept") == "as_run":
        keep &= (t["kept"].astype(bool) & ~t["row_key"].isin(KEPT_NOW_ONLY)) | t["row_key"].isin(KEPT_AS_RUN_ONLY)
    elif part.get("kept"):
        keep &= t["kept"].astype(bool)
    if any(k.startswith("dominance") for k in part):
        dom = pd.Series([prefill_dominance(r) for r in t.itertuples()], index=t.index)
        keep &= dom < part.get("dominance_below", float("inf"))
        keep &= dom >= part.get("dominance_from", float("-inf"))
        keep &= dom <= part.get("dominance_to", float("inf"))
    for name, want in (("slower", True), ("not_slower", False)):
        if name in part:
            a, b = part[name]
            keep &= (t[f"ms_{a}"] > t[f"ms_{b}"]) == want
    if "ratio_from" in part:
        a, b, x = part["ratio_from"]
        keep &= t[f"ms_{a}"] / t[f"ms_{b}"] >= x
    if "split_differs" in part:
        keep &= pd.Series([bool(keep[i]) and split_differs(r, *part["split_differs"])
                           for i, r in zip(t.index, t.itertuples())], index=t.index)
    keep |= t["row_key"].isin(part.get("add", []))
    keep &= ~pd.Series([_key(r) in chosen for r in t[list(CONFIG_FIELDS)].to_dict("records")], index=t.index)
    rows = t[keep]
    if "top" in part:
        col, n = part["top"]
        rows = rows.sort_values(col, ascending=False, kind="stable").head(n)
    if "sample" in part:
        n, seed = part["sample"]
        rows = rows.sample(n, random_state=seed)
    if "strata" in part:
        s = part["strata"]
        bands = pd.cut(rows[s["by"]], s["edges"], right=False)
        groups = [g for _, g in rows.groupby(bands, observed=True)]
        ns = s["n"] if isinstance(s["n"], list) else [s["n"]] * len(groups)
        rows = pd.concat([g.sample(min(n, len(g)), random_state=s["seed"]) for g, n in zip(groups, ns)])
    if "order" in part:
        rows = rows.sort_values(part["order"], kind="stable")
    return rows


def _derived(t: pd.DataFrame) -> pd.DataFrame:
    """The table with the columns a filter, a stratum or a comment may name."""
    extra = {}
    if {"ms_POD", "ms_OURS_Serial"} <= set(t.columns):
        extra["pod_over_serial"] = t["ms_POD"] / t["ms_OURS_Serial"]
    if {"ms_OURS_prefill", "ms_OURS_decode"} <= set(t.columns):
        extra["prefill_share"] = t["ms_OURS_prefill"] / (t["ms_OURS_prefill"] + t["ms_OURS_decode"])
    if {"ms_FI_prefill_auto", "ms_FI_decode"} <= set(t.columns):
        extra["fi_prefill_share"] = t["ms_FI_prefill_auto"] / (t["ms_FI_prefill_auto"] + t["ms_FI_decode"])
    return pd.concat([t, pd.DataFrame(extra, index=t.index)], axis=1)


def selected(name: str, table: pd.DataFrame | None = None) -> list[tuple[dict, str | None]]:
    """(config, comment) pairs the rule of study ``name`` picks; ``table`` replaces the committed
    figure-11 table (not the past ones a part names)."""
    rule = SELECTIONS[name]
    out, seen = [], set()
    for part in rule.get("parts", [rule]):
        if "study" in part or "configs" in part:
            configs = committed_configs(part["study"]) if "study" in part else part["configs"]
            pairs = [(dict(c), None) for c in configs]
        else:
            pairs = []
            for r in _part_rows(part, table, seen).to_dict("records"):
                config = {f: (str(r[f]) if f == "model" else int(r[f])) for f in CONFIG_FIELDS}
                pairs.append((config, rule["comment"].format(**r) if "comment" in rule else None))
        for config, comment in pairs:
            if _key(config) not in seen:
                seen.add(_key(config))
                out.append((config, comment))
    if "parts" in rule and "order" in rule:
        out.sort(key=lambda p: tuple(p[0][c] for c in rule["order"]))
    return out


def select(name: str, table: pd.DataFrame | None = None) -> list[dict]:
    """The configs (dicts of CONFIG_FIELDS) the rule of study ``name`` picks from the figure-11 table."""
    return [c for c, _ in selected(name, table)]


def yaml_path(name: str) -> Path:
    return STUDIES / f"{name}.yaml"


def studies_with_configs() -> list[str]:
    """Every study under experiments/studies whose YAML has a top-level configs: block."""
    return sorted(p.stem for p in STUDIES.glob("*.yaml") if re.search(r"^configs:", p.read_text(), re.M))


def configs_block(configs: list[dict], comments: list | None = None) -> str:
    """The configs: block of a study YAML, one flow mapping a line (a comment after it if given)."""
    comments = comments or [None] * len(configs)
    lines = ["  - {" + ", ".join(f"{f}: {c[f]}" for f in CONFIG_FIELDS if f in c) + "}" + (f"  # {n}" if n else "")
             for c, n in zip(configs, comments)]
    return "configs:\n" + "".join(line + "\n" for line in lines)


def rule_block(name: str, table: pd.DataFrame | None = None) -> str:
    """The configs: block ``--write`` gives for study ``name``."""
    pairs = selected(name, table)
    return configs_block([c for c, _ in pairs], [n for _, n in pairs])


def committed_configs(name: str) -> list[dict]:
    import yaml

    with open(yaml_path(name)) as f:
        return yaml.safe_load(f)["configs"]


def write(name: str, configs: list[dict] | str) -> None:
    """Replace the configs: block (from 'configs:' to the next top-level key) of the study's YAML
    with ``configs`` (a list, or a block as rule_block gives it)."""
    block = configs if isinstance(configs, str) else configs_block(configs)
    path = yaml_path(name)
    text = path.read_text()
    new, n = re.subn(r"^configs:\n(?:[ #].*\n)*", lambda m: block, text, count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"{path}: no top-level configs: block")
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(SELECTIONS) + sorted(RECORDED))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="compare with the committed YAML")
    g.add_argument("--write", action="store_true", help="rewrite the committed YAML's configs: block")
    g.add_argument("--list", action="store_true", help="say for every study how its configs were made")
    a = p.parse_args(argv)
    if a.list or a.name is None:
        for name in studies_with_configs():
            how = ("generated" if name in SELECTIONS else
                   f"recorded: {RECORDED[name]}" if name in RECORDED else "NEITHER generated nor recorded")
            print(f"{name}: {how}")
        return 0
    if a.name in RECORDED:
        print(f"{a.name}: recorded, not generated ({RECORDED[a.name]}); its configs are the list as run")
        return 0 if a.check else 1
    if a.write:
        write(a.name, rule_block(a.name))
    elif a.check:
        configs = select(a.name)
        ok = configs == committed_configs(a.name)
        print(f"{a.name}: {len(configs)} batches, {'equal to' if ok else 'DIFFERENT from'} {yaml_path(a.name)}")
        return 0 if ok else 1
    else:
        sys.stdout.write(rule_block(a.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
