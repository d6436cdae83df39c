#!/usr/bin/env python3
"""Quality of `--sparsity threshold` on stories260K (issue 10): sparsity against perplexity and
against greedy agreement with dense, calibration and evaluation on different texts.

Steps (every command is printed):
  1. flashlm repack stories260K.bin --tokenizer tok512.bin WORK/store --bundle gate+up-down
  2. calibration text: 4 samples of 500 tokens from the model itself (temperature 1, seeds 1-4,
     from "Once upon a time"); evaluation text: the same with seeds 11-14 (disjoint samples).
  3. per target S: flashlm calibrate WORK/store --text CAL --target-sparsity S --out WORK/thr-S.json
  4. flashlm perplexity WORK/store --text EVAL --sparsity threshold --thresholds WORK/thr-S.json
     (and --sparsity dense for the reference)
  5. greedy agreement: for each prompt, flashlm generate -n 256 --temp 0 --ignore-eos with dense
     and with threshold S; share of the 256 generated positions whose token equals dense's, and
     the length of the identical prefix. Measured sparsity: 1 - FFN neurons computed / total over
     those runs (--mem-budget 0 for the counters; decode passes are one token, so this is the
     per-token fraction; each prompt's prefill counts its union once per layer).
  6. FFN bytes per token relative to dense: the gate (1/3 of a layer's FFN) is always read, then
     [up | down] only for computed neurons: 1/3 + 2/3 x computed.

Usage: scripts/threshold_quality.py [--flashlm build/flashlm] [--models ../shared/models]
           [--work /tmp/threshold-quality] [--targets 0,0.1,0.2,0.3,0.5,0.7,0.8,0.9]
           [--csv docs/plots/threshold-quality.csv] [--plot docs/plots/threshold-quality-stories260k.svg]
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_runs import (PROMPTS, against_dense, greedy, perplexity, run,  # noqa: E402
                              sample_text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--models", default="../shared/models")
    ap.add_argument("--work", default="/tmp/threshold-quality")
    ap.add_argument("--targets", default="0,0.1,0.2,0.3,0.5,0.7,0.8,0.9")
    ap.add_argument("--csv", default="docs/plots/threshold-quality.csv")
    ap.add_argument("--plot", default="docs/plots/threshold-quality-stories260k.svg")
    a = ap.parse_args()
    exe = os.path.abspath(a.flashlm)
    os.makedirs(a.work, exist_ok=True)
    store = os.path.join(a.work, "store")
    m = os.path.join(a.models, "stories260K")
    if not os.path.exists(os.path.join(store, "catalog.lmdb")) and not os.path.isdir(store):
        run([exe, "repack", os.path.join(m, "stories260K.bin"), "--tokenizer",
             os.path.join(m, "tok512.bin"), store, "--bundle", "gate+up-down", "--no-progress"])
    cal, ev = os.path.join(a.work, "cal.txt"), os.path.join(a.work, "eval.txt")
    sample_text(exe, store, [1, 2, 3, 4], cal)
    sample_text(exe, store, [11, 12, 13, 14], ev)

    dense_flags = ["--sparsity", "dense"]
    dense_ppl = perplexity(exe, store, ev, dense_flags)
    dense = greedy(exe, store, a.work, "dense", dense_flags)
    rows = []
    for t in [float(x) for x in a.targets.split(",")]:
        thr = os.path.join(a.work, f"thr-{t}.json")
        out = run([exe, "calibrate", store, "--text", cal, "--target-sparsity", str(t), "--out",
                   thr]).stdout
        cal_sp = [float(x) for x in re.findall(r"\n +[0-9]+ +[0-9.e+-]+ +([0-9.]+)", out)]
        flags = ["--sparsity", "threshold", "--thresholds", thr]
        ppl = perplexity(exe, store, ev, flags)
        c = against_dense(dense, greedy(exe, store, a.work, f"threshold-{t}", flags))
        computed = c["computed"]
        rows.append({"target": t, "calibrated": sum(cal_sp) / len(cal_sp),
                     "measured": 1 - computed, "ppl": ppl, "ppl_ratio": ppl / dense_ppl,
                     "agreement": c["agreement"], "prefix_min": c["prefix_min"],
                     "prefix_median": c["prefix_median"], "ffn_bytes": 1 / 3 + 2 / 3 * computed})

    print(f"dense perplexity {dense_ppl:.4f} over {ev}")
    print("| target | calibrated (cal. text) | measured (greedy runs) | perplexity | vs dense | "
          "greedy agreement | identical prefix (min / median) | FFN bytes vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']:.1f} | {r['calibrated']:.3f} | {r['measured']:.3f} | "
              f"{r['ppl']:.4f} | {100 * (r['ppl_ratio'] - 1):+.1f}% | "
              f"{100 * r['agreement']:.1f}% | {r['prefix_min']} / {r['prefix_median']} | "
              f"{100 * r['ffn_bytes']:.0f}% |")
    os.makedirs(os.path.dirname(a.csv) or ".", exist_ok=True)
    with open(a.csv, "w") as f:
        f.write("target,calibrated,measured,perplexity,ppl_ratio,agreement,prefix_min,"
                "prefix_median,ffn_bytes\n")
        for r in rows:
            f.write(f"{r['target']},{r['calibrated']:.4f},{r['measured']:.4f},{r['ppl']:.4f},"
                    f"{r['ppl_ratio']:.4f},{r['agreement']:.4f},{r['prefix_min']},"
                    f"{r['prefix_median']},{r['ffn_bytes']:.4f}\n")
    gp = f"""set terminal svg size 720,420 dynamic font 'sans,12'
set output '{a.plot}'
set datafile separator ','
set title 'stories260K, --sparsity threshold: quality against measured sparsity'
set xlabel 'FFN neurons skipped per token (measured)'
set ylabel 'perplexity relative to dense (log scale)'
set logscale y
set y2label 'greedy agreement with dense (256 tokens x {len(PROMPTS)} prompts)'
set ytics nomirror
set y2tics
set y2range [0:1.05]
set xrange [0:1]
set key top right
set grid
plot '{a.csv}' every ::1 using 3:5 with linespoints lw 2 pt 7 title 'perplexity / dense', \\
     '' every ::1 using 3:6 axes x1y2 with linespoints lw 2 pt 5 title 'greedy agreement'
"""
    subprocess.run(["gnuplot"], input=gp, text=True, check=True)
    print(f"wrote {a.csv} and {a.plot}")


if __name__ == "__main__":
    main()
