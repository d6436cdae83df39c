#!/usr/bin/env python3
"""KV read granularity (issue 11): the size of flashlm's own KV reads against the bandwidth they
get, beside `flashlm iobench`'s random-read curve on the same file system, in one run.

For each page size P (--kv-page-tokens), KV dtype (--kv-dtype) and fetch granularity
(--kv-fetch rows|pages), decode at one context (default 4096) with top-N attention (default 5%)
over V spilled to flash at the smallest pool (every K page, one layer's V pages, the pages being
filled), the weights given DRAM enough to be all resident (only KV goes to flash). The cache is
filled with synthetic K/V (`generate --bench-fill-kv`), not a prefill. From the run's `kv` stats
(--stats-json): reads, bytes read, mean read size and KV I/O wait, per forward pass; effective
MiB/s = KV bytes read / KV I/O wait (which also holds decode's few spill writes). Then
`flashlm iobench` (random reads, uring, O_DIRECT, QD 1 and 32) on a file in the same folder as
the spill files. Each run: sync; drop caches; the command, under `flock /work/notes/bench.lock`.

Usage: scripts/bench_kv_granularity.py --store STORE [--exe build/flashlm] [--ctx 4096] [-n 3]
           [--pages 8,16,32,64] [--dtypes f32,f16,q8_0] [--topn 5%] [--kv-dir DIR] [--out F.jsonl]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROW_BYTES = {"f32": 4 * 256, "f16": 2 * 256, "q8_0": 34 * 256 // 32}  # 1b shape: kv_dim 256


def min_pool(ctx, P, dtype, layers=22):
    stride = -(-P * ROW_BYTES[dtype] // 4096) * 4096
    pps = math.ceil(ctx / P)
    return layers * pps * stride + (pps + layers) * stride, stride


def locked(cmd):
    return ["flock", "/work/notes/bench.lock", "sh", "-c",
            "sync; echo 3 > /proc/sys/vm/drop_caches; exec \"$@\"", "bench"] + cmd


def run(a, P, dtype, fetch):
    pool, stride = min_pool(a.ctx, P, dtype)
    js = tempfile.mktemp(suffix=".json")
    cmd = [a.exe, "generate", a.store, "--bench-prompt-tokens", str(a.ctx - a.n - 2),
           "--bench-fill-kv", "-n", str(a.n), "--temp", "0", "--ignore-eos", "--threads", "2",
           "--ctx", str(a.ctx), "--mem-budget", str(a.weights_mib * 2**20 + pool),
           "--kv-budget", str(pool), "--kv-page-tokens", str(P), "--kv-dtype", dtype,
           "--kv-topn", a.topn, "--kv-fetch", fetch, "--kv-dir", a.kv_dir, "--stats-json", js]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(locked(cmd), capture_output=True, text=True)
    row = {"P": P, "dtype": dtype, "fetch": fetch, "ctx": a.ctx, "page_stride": stride,
           "kv_pool": pool}
    if r.returncode != 0:
        row["error"] = r.stderr.strip().splitlines()[-1:]
        return row
    s = json.load(open(js))
    os.unlink(js)
    k = s["kv"]
    passes = max(s["io"]["passes"], 1)
    wait_s = k["io_wait_ms"] / 1000.0
    row.update({"passes": passes, "kv_bytes_per_pass": k["bytes_read"] / passes,
                "kv_reads_per_pass": k["reads"] / passes, "mean_read": k["mean_read_bytes"],
                "io_wait_ms": k["io_wait_ms"],
                "eff_mib_s": k["bytes_read"] / 2**20 / wait_s if wait_s > 0 else None,
                "decode_tok_s": s["decode_tokens_per_s"],
                "attention_ms_per_pass": k["attention_ms"] / passes})
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--exe", default="build/flashlm")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--pages", default="8,16,32,64")
    ap.add_argument("--dtypes", default="f32,f16,q8_0")
    ap.add_argument("--topn", default="5%")
    ap.add_argument("--weights-mib", type=int, default=2048)
    ap.add_argument("--kv-dir", default="/work/bench/kv3")
    ap.add_argument("--iobench-sizes", default="4K,8K,12K,16K,20K,32K,64K")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    out = open(a.out, "a") if a.out else None

    def emit(row):
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    for dtype in a.dtypes.split(","):
        for P in [int(p) for p in a.pages.split(",")]:
            for fetch in ("rows", "pages"):
                emit(run(a, P, dtype, fetch))
    io_json = tempfile.mktemp(suffix=".json")
    cmd = [a.exe, "iobench", "--file", os.path.join(a.kv_dir, "iobench.dat"), "--file-size",
           "1G", "--sizes", a.iobench_sizes, "--depths", "1,32", "--pattern", "random",
           "--backend", "uring", "--seconds", "1", "--json", io_json]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(locked(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        emit({"iobench_error": r.stderr.strip().splitlines()[-3:]})
    else:
        emit({"iobench": json.load(open(io_json))})
        os.unlink(io_json)


if __name__ == "__main__":
    main()
