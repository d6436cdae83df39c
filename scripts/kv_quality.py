#!/usr/bin/env python3
"""Quality of approximate attention on stories260K (issue 11): top-N positions (KCache,
--kv-topn N) and page selection (Quest, --kv-select pages|shared with --kv-topn N as the
position budget, ceil(N/P) pages), against exact attention: perplexity and greedy agreement.

Steps (every command is printed):
  1. text: 4 samples of 500 tokens from the model itself (temperature 1, seeds 1-4, from "Once
     upon a time"), as the first step's top-N table (the only text at hand: absolute perplexity is
     flattered, the relative change is the point).
  2. flashlm perplexity stories260K.bin --tokenizer tok512.bin --text TEXT --ctx C (exact, top-N,
     pages) for C in 128, 256, 512. Perplexity windows score every token, so the early tokens of
     each window see few positions (where any budget >= the context is exact).
  3. greedy agreement: generate -n 500 --temp 0 --ignore-eos --ctx 512 from "Once upon a time",
     the length in characters of the text identical to exact attention's.

Usage: scripts/kv_quality.py [--flashlm build/flashlm] [--models ../shared/models]
           [--work /tmp/kv-quality] [--csv docs/plots/kv-quality.csv]
           [--plot docs/plots/kv-quality-stories260k.svg] [--page-tokens 16]
"""
import argparse
import os
import re
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_runs import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--models", default="../shared/models")
    ap.add_argument("--work", default="/tmp/kv-quality")
    ap.add_argument("--csv", default="docs/plots/kv-quality.csv")
    ap.add_argument("--plot", default="docs/plots/kv-quality-stories260k.svg")
    ap.add_argument("--page-tokens", type=int, default=16)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    model = os.path.join(a.models, "stories260K", "stories260K.bin")
    tok = os.path.join(a.models, "stories260K", "tok512.bin")
    base = [a.flashlm]
    common = [model, "--tokenizer", tok, "--threads", "2"]
    text = os.path.join(a.work, "text.txt")
    parts = []
    for s in (1, 2, 3, 4):
        p = run(base + ["generate"] + common + ["-p", "Once upon a time", "-n", "500", "--temp",
                                                "1", "--seed", str(s), "--ignore-eos"])
        parts.append("Once upon a time" + p.stdout.rstrip("\n"))
    with open(text, "w") as f:
        f.write("\n".join(parts) + "\n")
    P = str(a.page_tokens)
    budgets = ["128", "64", "32", "16", "25%", "10%"]
    modes = [("exact", [])]
    for b in budgets:
        modes.append((f"top-{b}", ["--kv-topn", b]))
    for b in budgets:
        modes.append((f"pages-{b}", ["--kv-select", "pages", "--kv-page-tokens", P,
                                     "--kv-topn", b]))
    for b in budgets:
        modes.append((f"shared-{b}", ["--kv-select", "shared", "--kv-page-tokens", P,
                                      "--kv-topn", b]))
    rows = []
    greedy = {}
    for name, flags in modes:
        ppl = {}
        for ctx in (128, 256, 512):
            out = run(base + ["perplexity"] + common + ["--text", text, "--ctx", str(ctx)] +
                      flags).stdout
            ppl[ctx] = float(re.search(r"perplexity: ([0-9.]+)", out).group(1))
        g = run(base + ["generate"] + common + ["-p", "Once upon a time", "-n", "500", "--temp",
                                                "0", "--ignore-eos", "--ctx", "512"] + flags)
        greedy[name] = g.stdout
        rows.append((name, ppl))
    ref = greedy["exact"]

    def prefix(s):
        n = 0
        while n < min(len(s), len(ref)) and s[n] == ref[n]:
            n += 1
        return n

    exact = rows[0][1]
    print("| mode | ppl ctx 128 | ctx 256 | ctx 512 | vs exact (512) | greedy identical chars "
          "(of %d) |" % len(ref))
    print("|---|---|---|---|---|---|")
    with open(a.csv, "w") as f:
        f.write("mode,budget,ppl128,ppl256,ppl512,ratio512,greedy_prefix_chars,greedy_chars\n")
        for name, ppl in rows:
            pre = prefix(greedy[name])
            print(f"| {name} | {ppl[128]:.4f} | {ppl[256]:.4f} | {ppl[512]:.4f} | "
                  f"{ppl[512] / exact[512]:.4f} | {pre} |")
            f.write(f"{name},{name.split('-', 1)[-1]},{ppl[128]},{ppl[256]},{ppl[512]},"
                    f"{ppl[512] / exact[512]},{pre},{len(ref)}\n")
    gp = f"""set terminal svg size 800,480 dynamic font 'Helvetica,12'
set output '{a.plot}'
set datafile separator ','
set title 'stories260K, ctx 512: top-N positions vs page selection (P={P}), same budget N'
set ylabel 'perplexity relative to exact attention'
set xlabel 'budget N (positions; pages = ceil(N/P))'
set xtics ('128' 0, '64' 1, '32' 2, '16' 3, '25%%' 4, '10%%' 5)
set key top left
set grid
set logscale y
plot '{a.csv}' every ::1::{len(budgets)} using ($0):6 with linespoints lw 2 pt 7 title 'top-N (KCache)', \\
     '{a.csv}' every ::{len(budgets) + 1}::{2 * len(budgets)} using ($0):6 with linespoints lw 2 pt 5 title 'page selection per head (Quest)', \\
     '{a.csv}' every ::{2 * len(budgets) + 1} using ($0):6 with linespoints lw 2 pt 9 title 'page selection shared by heads'
"""
    gpf = os.path.join(a.work, "plot.gp")
    with open(gpf, "w") as f:
        f.write(gp)
    run(["gnuplot", gpf])


if __name__ == "__main__":
    main()
