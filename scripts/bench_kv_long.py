#!/usr/bin/env python3
"""Decode at long context with the KV cache under the budget (issue 11): exact attention with KV
in DRAM, exact with V spilled, top-N reading rows / pages of spilled V, page selection with V
spilled and with K and V spilled, at several context lengths, on a 1b-shape store whose declared
context is 32K (flashlm synth --shape 1b --context 32768).

The cache is filled with synthetic K/V (`generate --bench-fill-kv`: normal(0,1) rows written
straight into the cache, not a prefill, which would take hours on two cores) and then `-n N`
tokens are decoded. Every mode gets the same share for the weights: `--mem-budget` = W + its KV
pool (`--kv-budget`), so only the KV pool differs: the whole cache (DRAM), or the smallest pool
the mode accepts (one layer's pages and the pages being filled, plus every K page unless K
spills). Each run: sync; drop caches; then the command, under `flock /work/notes/bench.lock`.

Usage: scripts/bench_kv_long.py --store STORE [--exe build/flashlm] [--ctx 4096,16384]
           [--weights-mib 300] [-n 6] [--reps 1] [--topn 5%] [--out FILE.jsonl]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile


def pools(ctx, P=16, layers=22, kv_dim=256, row_bytes=4):
    stride = -(-P * kv_dim * row_bytes // 4096) * 4096
    pps = math.ceil(ctx / P)
    k_all = layers * pps * stride
    full = 2 * k_all
    vmin = k_all + (pps + layers) * stride
    kvmin = 2 * (pps + layers) * stride
    return {"full": full, "vmin": vmin, "kvmin": kvmin, "v_bytes": k_all}


MODES = [
    ("exact, KV in DRAM", "full", []),
    ("exact, V spilled", "vmin", []),
    ("top-N rows, V spilled", "vmin", ["--kv-topn", "TOPN", "--kv-fetch", "rows"]),
    ("top-N pages, V spilled", "vmin", ["--kv-topn", "TOPN"]),
    ("page select, V spilled", "vmin", ["--kv-select", "pages", "--kv-topn", "TOPN"]),
    ("page select, K+V spilled", "kvmin",
     ["--kv-select", "pages", "--kv-spill", "kv", "--kv-topn", "TOPN"]),
    ("shared page select, V spilled", "vmin", ["--kv-select", "shared", "--kv-topn", "TOPN"]),
    ("shared page select, K+V spilled", "kvmin",
     ["--kv-select", "shared", "--kv-spill", "kv", "--kv-topn", "TOPN"]),
]


def run(a, ctx, name, pool_key, flags):
    p = pools(ctx)
    kv = p[pool_key]
    budget = a.weights_mib * 2**20 + kv
    js = tempfile.mktemp(suffix=".json")
    flags = [a.topn if f == "TOPN" else f for f in flags]
    cmd = [a.exe, "generate", a.store, "--bench-prompt-tokens", str(ctx - a.n - 2),
           "--bench-fill-kv", "-n", str(a.n), "--temp", "0", "--ignore-eos", "--threads", "2",
           "--ctx", str(ctx), "--mem-budget", str(budget), "--kv-budget", str(kv),
           "--kv-dir", a.kv_dir, "--stats-json", js] + flags
    full = ["flock", "/work/notes/bench.lock", "sh", "-c",
            "sync; echo 3 > /proc/sys/vm/drop_caches; exec \"$@\"", "bench"] + cmd
    print("$ " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(full, capture_output=True, text=True)
    if r.returncode != 0:
        return {"mode": name, "ctx": ctx, "error": r.stderr.strip().splitlines()[-1:]}
    s = json.load(open(js))
    os.unlink(js)
    k = s["kv"]
    passes = max(s["io"]["passes"], 1)
    return {"mode": name, "ctx": ctx, "kv_pool": kv, "budget": budget, "kv_full": p["full"],
            "v_bytes": p["v_bytes"], "decode_tok_s": s["decode_tokens_per_s"],
            "kv_bytes_per_pass": k["bytes_read"] / passes, "kv_reads_per_pass": k["reads"] / passes,
            "kv_mean_read": k["mean_read_bytes"], "kv_io_wait_ms": k["io_wait_ms"],
            "attention_ms_per_pass": k["attention_ms"] / passes, "passes": passes,
            "pages_selected": k.get("pages_selected", 0), "pages_total": k.get("pages_total", 0),
            "head_pages_selected": k.get("head_pages_selected", 0),
            "head_pages_total": k.get("head_pages_total", 0),
            "weights_bytes_per_pass": s["io"]["bytes_read"] / passes,
            "stderr_tail": r.stderr.strip().splitlines()[-4:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--exe", default="build/flashlm")
    ap.add_argument("--ctx", default="4096,16384")
    ap.add_argument("--weights-mib", type=int, default=300)
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--topn", default="5%")
    ap.add_argument("--modes", default="")
    ap.add_argument("--kv-dir", default="/work/bench/quest")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    wanted = set(a.modes.split(",")) if a.modes else None
    out = open(a.out, "a") if a.out else None
    for rep in range(a.reps):
        for ctx in [int(c) for c in a.ctx.split(",")]:
            for i, (name, pool_key, flags) in enumerate(MODES):
                if wanted and str(i) not in wanted:
                    continue
                row = run(a, ctx, name, pool_key, flags)
                row["rep"] = rep
                print(json.dumps(row), flush=True)
                if out:
                    out.write(json.dumps(row) + "\n")
                    out.flush()


if __name__ == "__main__":
    main()
