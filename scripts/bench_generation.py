#!/usr/bin/env python3
"""Generation benchmark: flashlm against llama.cpp's llama-bench on the same GGUF.

For each model, runs back to back, `--reps` times (each rep starting with the next program in
turn: what runs first after another program's run measures slower, so use a multiple of the
number of programs):
  llama-bench -m MODEL -t THREADS -p 128 -n 64 -pg 128,64 -r 1 -o json [--llama-args ...]
  flashlm generate MODEL --bench-prompt-tokens 128 -n 65 ...  (prefill; decode at depth 128)
  flashlm generate MODEL --bench-prompt-tokens 1 -n 65 ...    (decode from an empty context)
(flashlm with --temp 0 --ignore-eos --threads THREADS --stats-json FILE [--flashlm-args ...]),
and reports the medians of each figure and their ratios flashlm / llama.cpp.

What each column measures (tokens/s):
- pp128: llama-bench's pp128, a 128-token prompt in one batch into an empty KV cache; flashlm's
  prefill of its 128-token prompt (BOS + 127 fixed ids), likewise one batch from position 0.
- tg64: llama-bench's tg64, 64 one-token decode steps from an EMPTY cache (positions 0..63,
  tokens random, no sampling); flashlm's decode of the run with a 1-token prompt (BOS prefilled
  at position 0, then 64 one-token steps at positions 1..64, greedy sampling included). Same
  attention depth (one position apart).
- tg64@128: 64 one-token decode steps after a 128-token prompt (positions 128..191). flashlm:
  the decode of the 128-token run, measured. llama.cpp: DERIVED, llama-bench has no depth option
  in this version: its pg128,64 test times a 128-token prompt plus 64 decode steps as one figure,
  so decode time = 192 / pg - 128 / pp128 (pp128 from the same llama-bench call), tg64@128 =
  64 / that. Noisier than the measured columns (a difference of two timings).
KV cache: llama.cpp's default is f16 K and V; flashlm's default is f32 rows (a flat cache);
pass --flashlm-args="--kv-dtype f16" (a paged cache of f16 rows) or --llama-args="-ctk f32
-ctv f32" to match them.

Decode against DRAM: the last two columns are flashlm's tg64 times the bytes of weights its
decode reads a token (`weight_bytes_per_token` in its --stats-json: every matrix, the classifier
and one embedding row, as loaded), in GB/s (1e9), and that rate as a fraction of the DRAM read
bandwidth `flashlm plan MODEL --threads THREADS --json` measures (the kernels' thread pool
summing a 256 MiB buffer on huge pages, best of three), measured before and after each model's
runs (both fractions shown).
A read-only rate: a STREAM-style copy counts its written bytes too and reads higher on some
machines (docs/benchmarks.md). The KV cache's reads are not counted (at most 64 positions).

With --compare OTHER_FLASHLM, another flashlm binary (e.g. the previous commit's) runs in the
same loop, so that a change is measured against what it replaces under the same
conditions.

Usage: scripts/bench_generation.py --flashlm build/flashlm --llama-bench /path/llama-bench \
          [--threads 2] [--reps 5] [--compare OLD/flashlm] [--flashlm-args ARGS] \
          [--llama-args ARGS] MODEL.gguf...
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile


def llama_bench(exe, model, threads, extra):
    out = subprocess.run([exe, "-m", model, "-t", str(threads), "-p", "128", "-n", "64", "-pg",
                          "128,64", "-r", "1", "-o", "json"] + extra,
                         check=True, capture_output=True, text=True).stdout
    pp = tg = pg = None
    for row in json.loads(out):
        if row.get("n_prompt") == 128 and row.get("n_gen") == 0:
            pp = row["avg_ts"]
        if row.get("n_gen") == 64 and row.get("n_prompt") == 0:
            tg = row["avg_ts"]
        if row.get("n_gen") == 64 and row.get("n_prompt") == 128:
            pg = row["avg_ts"]
    decode_s = 192.0 / pg - 128.0 / pp
    tg_depth = 64.0 / decode_s if decode_s > 0 else float("nan")
    return pp, tg, tg_depth


def flashlm_run(exe, model, threads, prompt_tokens, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([exe, "generate", model, "--bench-prompt-tokens", str(prompt_tokens), "-n",
                        "65", "--temp", "0", "--ignore-eos", "--threads", str(threads),
                        "--stats-json", f.name] + extra, check=True, capture_output=True)
        stats = json.load(open(f.name))
    return (stats["prefill_tokens_per_s"], stats["decode_tokens_per_s"],
            stats.get("weight_bytes_per_token", 0))


def flashlm(exe, model, threads, extra):
    """(pp128, tg64 from an empty context, tg64 at depth 128, weight bytes a decode token)."""
    pp, tg_depth, _ = flashlm_run(exe, model, threads, 128, extra)
    _, tg, weight_bytes = flashlm_run(exe, model, threads, 1, extra)
    return pp, tg, tg_depth, weight_bytes


def dram_read_gbps(exe, model, threads):
    """The DRAM read bandwidth flashlm's planner measures with `threads` threads, GB/s."""
    out = subprocess.run([exe, "plan", model, "--threads", str(threads), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["resident"]["speed"]["dram_gbps"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-bench", default="/work/llama.cpp/build/bin/llama-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compare", help="another flashlm binary, run in the same loop")
    ap.add_argument("--flashlm-args", default="", help="extra flashlm generate flags")
    ap.add_argument("--llama-args", default="", help="extra llama-bench flags")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    fx, lx = shlex.split(a.flashlm_args), shlex.split(a.llama_args)
    names = ("pp128", "tg64", "tg64@128")
    head = "| model |" + "".join(f" llama.cpp {n} | flashlm {n} | ratio |" for n in names)
    rule = "|---|" + "---|---|---|" * len(names)
    if a.compare:
        head += "".join(f" compared {n} | ratio |" for n in names)
        rule += "---|---|" * len(names)
    head += " flashlm tg64 GB/s | of DRAM read (before / after) |"
    rule += "---|---|"
    print(head)
    print(rule)
    for m in a.models:
        ll, fl, cl = [], [], []
        runs = [(ll, lambda: llama_bench(a.llama_bench, m, a.threads, lx)),
                (fl, lambda: flashlm(a.flashlm, m, a.threads, fx))]
        if a.compare:
            runs.append((cl, lambda: flashlm(a.compare, m, a.threads, fx)))
        dram_before = dram_read_gbps(a.flashlm, m, a.threads)
        for rep in range(a.reps):
            # Each rep starts with the next program: whichever runs right after llama-bench
            # measured slower (a first-run penalty; docs/benchmarks.md), so no side keeps it.
            k = rep % len(runs)
            for results, run in runs[k:] + runs[:k]:
                results.append(run())
            fmt = lambda r: "/".join(f"{v:.1f}" for v in r[:3])
            print(f"# {m}: llama.cpp {fmt(ll[-1])}  flashlm {fmt(fl[-1])}" +
                  (f"  compared {fmt(cl[-1])}" if a.compare else ""), file=sys.stderr)
        dram_after = dram_read_gbps(a.flashlm, m, a.threads)
        print(f"# {m}: DRAM read {dram_before:.1f} GB/s before, {dram_after:.1f} after",
              file=sys.stderr)
        med = lambda runs, i: statistics.median(r[i] for r in runs)
        row = f"| {m} |"
        for i in range(len(names)):
            row += f" {med(ll, i):.1f} | {med(fl, i):.1f} | {med(fl, i) / med(ll, i):.2f} |"
        if a.compare:
            for i in range(len(names)):
                row += f" {med(cl, i):.1f} | {med(cl, i) / med(ll, i):.2f} |"
        gbps = med(fl, 1) * fl[-1][3] / 1e9
        if gbps > 0 and dram_before > 0 and dram_after > 0:  # plan reports 0 if it cannot measure
            row += f" {gbps:.1f} | {gbps / dram_before:.2f} / {gbps / dram_after:.2f} |"
        else:
            row += " - | - |"
        print(row)


if __name__ == "__main__":
    main()
