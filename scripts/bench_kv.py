#!/usr/bin/env python3
"""KV-cache benchmark (issue 11): top-N attention with V spilled to flash, --kv-fetch rows against
pages, at several --kv-page-tokens; and the prompt cache's time to first token.

Fetch granularity. For each repetition, page size and mode, back to back (the order of the modes
alternating between repetitions), with the page cache dropped before every run:
  flashlm generate STORE --bench-prompt-tokens T -n N --temp 0 --ignore-eos --ctx C --threads 1
      --kv-page-tokens P --kv-budget MIN --kv-topn K --kv-fetch rows|pages --stats-json FILE
where MIN is the smallest pool the cache takes at that page size (read from the refusal of a
1-byte --kv-budget), so V pages spill. Each configuration also runs with -n 1: the KV bytes and
reads of decode alone are (run N - run 1) / (N - 1) per token. Reference in the same repetition:
the flat f32 cache in DRAM with exact attention, and top-K with the paged cache all in DRAM.
Time per token: the median of the decode steps' token_ms.

Prompt cache. A cold run with --prompt-cache on a fresh file (a miss: the whole prompt is run, then
saved) and a warm run on the same file (a hit: all but the last prompt token restored); TTFT of
each, for the flat cache and for the paged one spilling; -n 1.

Needs root (drop_caches). Usage:
  scripts/bench_kv.py --store STORE [--exe build/flashlm] [--reps 3] [--prompt-tokens 480]
      [-n 33] [--ctx 512] [--topn 16] [--pages 8,16,32,64] [--raw out.jsonl]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def generate(a, n, extra):
    drop_caches()
    with tempfile.NamedTemporaryFile(suffix=".json") as js:
        cmd = [a.exe, "generate", a.store, "--bench-prompt-tokens", str(a.prompt_tokens), "-n",
               str(n), "--temp", "0", "--ignore-eos", "--ctx", str(a.ctx), "--threads", "1",
               "--stats-json", js.name] + extra
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit("failed: " + " ".join(cmd) + "\n" + p.stderr)
        return json.load(open(js.name))


def minimum_pool(a, page):
    p = subprocess.run([a.exe, "generate", a.store, "--bench-prompt-tokens", "2", "-n", "1",
                        "--ctx", str(a.ctx), "--kv-page-tokens", str(page), "--kv-budget", "1"],
                       capture_output=True, text=True)
    m = re.search(r"minimum of [^(]*\(([0-9]+) bytes", p.stderr)
    if not m:
        sys.exit("cannot read the minimum pool from: " + p.stderr)
    return int(m.group(1))


def decode_ms(js):
    t = js["token_ms"]
    return statistics.median(t) if t else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--exe", default="build/flashlm")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=480)
    ap.add_argument("-n", type=int, default=33)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--topn", default="16")
    ap.add_argument("--pages", default="8,16,32,64")
    ap.add_argument("--raw")
    a = ap.parse_args()
    pages = [int(x) for x in a.pages.split(",")]
    minimum = {p: minimum_pool(a, p) for p in pages}
    raw = open(a.raw, "w") if a.raw else None
    rows = {}  # (page, mode) -> list of per-rep dicts
    refs = {"flat exact": [], "paged top-N in DRAM": []}
    ttft = {}
    for rep in range(a.reps):
        refs["flat exact"].append(decode_ms(generate(a, a.n, [])))
        refs["paged top-N in DRAM"].append(
            decode_ms(generate(a, a.n, ["--kv-page-tokens", "16", "--kv-topn", a.topn])))
        for page in pages:
            modes = ["pages", "rows"] if rep % 2 == 0 else ["rows", "pages"]
            for mode in modes:
                extra = ["--kv-page-tokens", str(page), "--kv-budget", str(minimum[page]),
                         "--kv-topn", a.topn, "--kv-fetch", mode]
                one = generate(a, 1, extra)
                full = generate(a, a.n, extra)
                d = a.n - 1
                r = {"page": page, "mode": mode, "rep": rep,
                     "bytes_per_token": (full["kv"]["bytes_read"] - one["kv"]["bytes_read"]) / d,
                     "reads_per_token": (full["kv"]["reads"] - one["kv"]["reads"]) / d,
                     "ms_per_token": decode_ms(full), "pool": minimum[page],
                     "stride": full["kv"]["page_stride_bytes"], "ids": full["ids"]}
                rows.setdefault((page, mode), []).append(r)
                if raw:
                    raw.write(json.dumps(r) + "\n")
        # Prompt cache: a miss (fresh file) then a hit, flat and paged-spilled.
        for kind, extra in (("flat", []), ("paged 16, V spilled", [
                "--kv-page-tokens", "16", "--kv-budget", str(minimum.get(16, minimum[pages[0]]))])):
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "prompt.cache")
                miss = generate(a, 1, extra + ["--prompt-cache", path])
                size = os.path.getsize(path)
                hit = generate(a, 1, extra + ["--prompt-cache", path])
                assert hit["prompt_cache"]["restored_tokens"] == a.prompt_tokens - 1
                assert hit["ids"] == miss["ids"]
                ttft.setdefault(kind, []).append(
                    (miss["ttft_ms"], hit["ttft_ms"], hit["prompt_cache"]["load_ms"],
                     miss["prompt_cache"]["save_ms"], size))
    print(f"prompt {a.prompt_tokens} tokens, ctx {a.ctx}, top-{a.topn}, {a.reps} repetitions, "
          "medians")
    for k, v in refs.items():
        print(f"reference {k}: {statistics.median(v):.3f} ms/token")
    print("| page tokens | page stride | pool (minimum) | fetch | KV bytes/token | reads/token | "
          "mean read | ms/token | vs flat exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    flat = statistics.median(refs["flat exact"])
    for page in pages:
        for mode in ("pages", "rows"):
            rs = rows[(page, mode)]
            b = statistics.median(r["bytes_per_token"] for r in rs)
            n = statistics.median(r["reads_per_token"] for r in rs)
            ms = statistics.median(r["ms_per_token"] for r in rs)
            print(f"| {page} | {rs[0]['stride']} B | {rs[0]['pool'] / 1024:.0f} KiB | {mode} | "
                  f"{b / 1024:.1f} KiB | {n:.1f} | {b / n / 1024 if n else 0:.2f} KiB | "
                  f"{ms:.3f} | {ms / flat:.2f}x |")
        same = all(p["ids"] == r["ids"] for p, r in zip(rows[(page, "pages")],
                                                         rows[(page, "rows")]))
        print(f"page {page}: rows and pages gave identical ids: {same}")
    print("| prompt cache, KV | TTFT miss (ms) | TTFT hit (ms) | load (ms) | save (ms) | file |")
    print("|---|---|---|---|---|---|")
    for kind, v in ttft.items():
        med = [statistics.median(x[i] for x in v) for i in range(5)]
        print(f"| {kind} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.1f} | "
              f"{med[4] / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
