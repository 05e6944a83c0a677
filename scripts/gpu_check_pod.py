"""GPU check of our Triton kernel family: correctness on odd shapes, then per-part rates and the
fused variants on the paper's C0/C1/C2 batches. Prints a table; writes CSV rows to --out.

    python scripts/gpu_check_pod.py --out pod_check.csv
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from experiments.timing import time_callable
from kernels.reference import check_outputs, reference_outputs
from kernels.registry import create
from kernels.workload import BatchSpec, HybridBatch, ModelShape

ODD = [  # q heads, kv heads, head dim, dtype, chunk, chunk KV, decodes, decode ctx, options
    (6, 2, 64, "float16", 37, 101, 5, 77, {}),
    (12, 4, 128, "bfloat16", 300, 1001, 17, 999, {"kv_layout": "paged"}),
    (6, 2, 256, "float16", 129, 400, 9, 333, {}),
    (32, 32, 128, "float16", 64, 4096, 8, 4096, {"ctas_per_sm": 4}),
    (24, 8, 128, "bfloat16", 512, 8192, 40, 5000, {"ctas_per_sm": 2, "decode_split": 2, "prefill_split": 3}),
]
PAPER = {  # the paper's Table 1 batches and two more, llama-3-8b at TP2 = 16 q / 4 kv heads
    "C0": (16, 4, 1024, 12288, 80, 12288),
    "C1": (16, 4, 12288, 12288, 220, 12288),
    "C2": (16, 4, 16384, 16384, 250, 12288),
    "yi6b-512@8K+54x16K": (32, 4, 512, 8192, 54, 16384),
    "512@16K+64x16K": (16, 4, 512, 16384, 64, 16384),
}
VARIANTS = {
    "OURS_prefill": {}, "OURS_decode": {}, "OURS_Serial": {}, "OURS_Streams": {}, "OURS_CTA": {},
    "POD": {}, "POD_2cta": {"ctas_per_sm": 2}, "POD_4cta": {"ctas_per_sm": 4},
    "POD_5050": {"policy": "50:50"}, "POD_vanilla_split": {"prefill_split": "vanilla"},
    "POD_v1": {"virtual_decode_ctas": 1}, "POD_paged": {"kv_layout": "paged"},
    "OURS_prefill_ptr": {"prefill_loads": "pointer"}, "OURS_Serial_ptr": {"prefill_loads": "pointer"},
    "POD_ptr": {"prefill_loads": "pointer"},
    "POD_resident": {"binding": "resident"}, "POD_2cta_resident": {"ctas_per_sm": 2, "binding": "resident"},
    "POD_progress": {"binding": "progress"},
}
BASES = ("OURS_prefill", "OURS_decode", "OURS_Serial", "OURS_Streams", "OURS_CTA", "POD")


def run_one(name, opts, batch, ref, timing):
    base = next(b for b in BASES if name == b or name.startswith(b + "_"))
    m = create(base, **opts)
    t0 = time.time()
    fn = m.prepare(batch)
    out = fn()
    torch.cuda.synchronize()
    chk = check_outputs(out, ref, batch.spec.dtype, m.parts)
    row = dict(method=name, ok=chk.ok, rel_err=chk.rel_err, first_call_s=time.time() - t0,
               plan=json.dumps(m.info().get("plan", {}), default=str)[:300])
    if chk.ok and timing:
        t = time_callable(fn, batch.device, **timing)
        row.update(median_ms=t.median_ms, min_ms=t.min_ms, max_ms=t.max_ms)
    elif not chk.ok:
        row["reason"] = chk.reason
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pod_check.csv")
    ap.add_argument("--skip-odd", action="store_true")
    ap.add_argument("--configs", default=",".join(PAPER))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    if not args.skip_odd:
        for hq, hkv, d, dt, lq, lk, bs, cl, opts in ODD:
            spec = BatchSpec(ModelShape("odd", hq, hkv, d), dt, lq, lk, bs, cl, page_size=16)
            batch = HybridBatch.allocate(spec, dev)
            ref = reference_outputs(batch)
            for name in BASES + ("OURS_prefill_ptr", "POD_ptr", "POD_resident", "POD_2cta_resident", "POD_progress"):
                try:
                    r = run_one(name, {**opts, **VARIANTS.get(name, {})}, batch, ref, None)
                except Exception as e:  # keep going: the table says what broke
                    r = dict(method=name, ok=False, reason=repr(e)[:300])
                r.update(config=f"odd {hq}/{hkv} d{d} {dt} {lq}@{lk}+{bs}x{cl} {opts}")
                rows.append(r)
                print(r, flush=True)
            del batch, ref
    timing = dict(warmup=2, repeats=5, calls=10)
    for cname in args.configs.split(","):
        hq, hkv, lq, lk, bs, cl = PAPER[cname]
        spec = BatchSpec(ModelShape(cname, hq, hkv, 128), "float16", lq, lk, bs, cl, page_size=16)
        batch = HybridBatch.allocate(spec, dev)
        for _ in range(2):  # the second call shows the reference's steady cost per sweep row
            torch.cuda.synchronize()
            t0 = time.time()
            ref = reference_outputs(batch)
            torch.cuda.synchronize()
        print(f"{cname}: reference {time.time() - t0:.3f} s", flush=True)
        fl, by = spec.flops(), spec.bytes_moved()
        limit_ms = max((by["prefill"] + by["decode"]) / 3.35e12, (fl["prefill"] + fl["decode"]) / 989e12) * 1e3
        for name in args.variants.split(","):
            try:
                r = run_one(name, VARIANTS[name], batch, ref, timing)
            except Exception as e:
                r = dict(method=name, ok=False, reason=repr(e)[:300])
            r.update(config=cname, limit_ms=limit_ms)
            if "median_ms" in r:
                if name.startswith("OURS_prefill"):
                    r["rate"] = f"{fl['prefill'] / r['median_ms'] / 1e9:.0f} TFLOP/s"
                elif name == "OURS_decode":
                    r["rate"] = f"{by['decode'] / r['median_ms'] / 1e9:.2f} TB/s"
            rows.append(r)
            print(r, flush=True)
        del batch, ref
        torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    cols = [c for c in ("config", "method", "ok", "rel_err", "median_ms", "limit_ms", "rate") if c in df]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(df[cols].to_string(index=False))


if __name__ == "__main__":
    main()
