#!/usr/bin/env python3
"""Generation benchmark: flashlm against llama.cpp's llama-bench on the same GGUF.

For each model, runs back to back, `--reps` times:
  llama-bench -m MODEL -t THREADS -p 128 -n 64 -r 1 -o json
  flashlm generate MODEL --bench-prompt-tokens 128 -n 65 --temp 0 --ignore-eos --threads THREADS
      --stats-json FILE
and reports the median prefill (pp128) and decode (tg64) tokens/s of each and their ratio.
flashlm's decode figure covers the 64 tokens after the first, like tg64; its prefill covers the
128 prompt tokens, like pp128.

With --compare OTHER_FLASHLM, another flashlm binary (e.g. the previous commit's) runs in the
same loop, right after, so that a change is measured against what it replaces under the same
conditions.

Usage: scripts/bench_generation.py --flashlm build/flashlm --llama-bench /path/llama-bench \
          [--threads 2] [--reps 5] [--compare OLD/flashlm] MODEL.gguf...
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile


def llama_bench(exe, model, threads):
    out = subprocess.run([exe, "-m", model, "-t", str(threads), "-p", "128", "-n", "64", "-r", "1",
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    pp = tg = None
    for row in json.loads(out):
        if row.get("n_prompt") == 128 and row.get("n_gen") == 0:
            pp = row["avg_ts"]
        if row.get("n_gen") == 64 and row.get("n_prompt") == 0:
            tg = row["avg_ts"]
    return pp, tg


def flashlm(exe, model, threads):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([exe, "generate", model, "--bench-prompt-tokens", "128", "-n", "65",
                        "--temp", "0", "--ignore-eos", "--threads", str(threads), "--stats-json",
                        f.name], check=True, capture_output=True)
        stats = json.load(open(f.name))
    return stats["prefill_tokens_per_s"], stats["decode_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-bench", default="/work/llama.cpp/build/bin/llama-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compare", help="another flashlm binary, run in the same loop")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    head = "| model | llama.cpp pp128 | flashlm pp128 | ratio | llama.cpp tg64 | flashlm tg64 | ratio |"
    rule = "|---|---|---|---|---|---|---|"
    if a.compare:
        head += " compared pp128 | ratio | compared tg64 | ratio |"
        rule += "---|---|---|---|"
    print(head)
    print(rule)
    for m in a.models:
        lp, lt, fp, ft, cp, ct = [], [], [], [], [], []
        for _ in range(a.reps):
            p, t = llama_bench(a.llama_bench, m, a.threads)
            lp.append(p)
            lt.append(t)
            p, t = flashlm(a.flashlm, m, a.threads)
            fp.append(p)
            ft.append(t)
            if a.compare:
                p, t = flashlm(a.compare, m, a.threads)
                cp.append(p)
                ct.append(t)
            print(f"# {m}: llama.cpp {lp[-1]:.1f}/{lt[-1]:.1f}  flashlm {fp[-1]:.1f}/{ft[-1]:.1f}" +
                  (f"  compared {cp[-1]:.1f}/{ct[-1]:.1f}" if a.compare else ""), file=sys.stderr)
        mlp, mlt, mfp, mft = map(statistics.median, (lp, lt, fp, ft))
        row = (f"| {m} | {mlp:.1f} | {mfp:.1f} | {mfp / mlp:.2f} | {mlt:.1f} | {mft:.1f} | "
               f"{mft / mlt:.2f} |")
        if a.compare:
            mcp, mct = statistics.median(cp), statistics.median(ct)
            row += f" {mcp:.1f} | {mcp / mlp:.2f} | {mct:.1f} | {mct / mlt:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
