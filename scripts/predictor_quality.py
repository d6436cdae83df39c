#!/usr/bin/env python3
"""Quality of `--sparsity predictor` on stories260K (issue 10), beside `--sparsity threshold`:
sparsity against perplexity and against greedy agreement with dense; training and evaluation on
different texts (the same texts scripts/threshold_quality.py uses).

Steps (every command is printed):
  1. flashlm repack stories260K.bin --tokenizer tok512.bin WORK/store-gud --bundle gate-up-down
     (the predictor needs no separate gate; one read per predicted neuron)
  2. training text: 4 samples of 500 tokens from the model itself (temperature 1, seeds 1-4, from
     "Once upon a time"); evaluation text: the same with seeds 11-14.
  3. flashlm train-predictor WORK/store-gud --text CAL --rank R --fire-fraction F --epochs E
  4. per cut P: flashlm perplexity WORK/store-gud --text EVAL --sparsity predictor --predictor-cut P
     (and --sparsity dense for the reference)
  5. greedy agreement: per prompt, flashlm generate -n 256 --temp 0 --ignore-eos, dense and with
     cut P; share of the 256 positions equal to dense's, and the identical prefix. Measured
     sparsity: 1 - FFN neurons computed / total over those runs (decode passes are one token).
  6. FFN bytes per token relative to dense: computed share (gate-up-down: a predicted neuron's
     whole bundle) + the predictor's own bytes (from the `ffn` stats).
  The threshold mode's rows are read from docs/plots/threshold-quality.csv (scripts/
  threshold_quality.py, same texts, same prompts) and drawn on the same plot.

Usage: scripts/predictor_quality.py [--flashlm build/flashlm] [--models ../shared/models]
           [--work /tmp/predictor-quality] [--rank 32 --fire-fraction 0.3 --epochs 30]
           [--cuts 0,0.05,0.1,0.2,0.3,0.5,0.7] [--csv docs/plots/predictor-quality.csv]
           [--plot docs/plots/predictor-quality-stories260k.svg]
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_runs import (PROMPTS, against_dense, greedy, perplexity, run,  # noqa: E402
                              sample_text)


def mode_flags(mode, cut):
    return ["--sparsity", mode] + (["--predictor-cut", str(cut)] if mode == "predictor" else [])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--models", default="../shared/models")
    ap.add_argument("--work", default="/tmp/predictor-quality")
    ap.add_argument("--rank", default="32")
    ap.add_argument("--fire-fraction", default="0.3")
    ap.add_argument("--epochs", default="30")
    ap.add_argument("--cuts", default="0,0.05,0.1,0.2,0.3,0.5,0.7")
    ap.add_argument("--threshold-csv", default="docs/plots/threshold-quality.csv")
    ap.add_argument("--csv", default="docs/plots/predictor-quality.csv")
    ap.add_argument("--plot", default="docs/plots/predictor-quality-stories260k.svg")
    a = ap.parse_args()
    exe = os.path.abspath(a.flashlm)
    os.makedirs(a.work, exist_ok=True)
    store = os.path.join(a.work, "store-gud")
    m = os.path.join(a.models, "stories260K")
    if not os.path.isdir(store):
        run([exe, "repack", os.path.join(m, "stories260K.bin"), "--tokenizer",
             os.path.join(m, "tok512.bin"), store, "--bundle", "gate-up-down", "--no-progress"])
    cal, ev = os.path.join(a.work, "cal.txt"), os.path.join(a.work, "eval.txt")
    sample_text(exe, store, [1, 2, 3, 4], cal)
    sample_text(exe, store, [11, 12, 13, 14], ev)
    train = run([exe, "train-predictor", store, "--text", cal, "--rank", a.rank,
                 "--fire-fraction", a.fire_fraction, "--epochs", a.epochs, "--threads", "2"]).stdout
    print(train)

    dense_ppl = perplexity(exe, store, ev, mode_flags("dense", None))
    dense = greedy(exe, store, a.work, "dense", mode_flags("dense", None))
    rows = []
    for cut in [float(x) for x in a.cuts.split(",")]:
        ppl = perplexity(exe, store, ev, mode_flags("predictor", cut))
        g = greedy(exe, store, a.work, f"predictor-{cut}", mode_flags("predictor", cut))
        c = against_dense(dense, g)
        computed = c["computed"]
        pb = sum(r["pred"].get("bytes", 0) for r in g)
        fb = sum(r["pred"].get("ffn_bytes", 0) for r in g)
        pf = sum(r["pred"].get("flops", 0) for r in g)
        ff = sum(r["pred"].get("ffn_flops", 0) for r in g)
        pc = sum(r["pred"].get("pairs_computed", 0) for r in g)
        pfired = sum(r["pred"].get("pairs_fired", 0) for r in g)
        # FFN bytes vs dense: the bundles read (computed share) + the predictor's weights, both
        # over the dense FFN's bytes per pass (fb / computed = the dense bundle bytes).
        dense_ffn = fb / computed if computed > 0 else None
        rows.append({"cut": cut, "measured": 1 - computed, "ppl": ppl,
                     "ppl_ratio": ppl / dense_ppl, "agreement": c["agreement"],
                     "prefix_min": c["prefix_min"], "prefix_median": c["prefix_median"],
                     "ffn_bytes": (fb + pb) / dense_ffn if dense_ffn else float("nan"),
                     "pred_flops_share": pf / (pf + ff) if pf + ff else 0.0,
                     "precision": pfired / pc if pc else 0.0})

    print(f"dense perplexity {dense_ppl:.4f} over {ev}")
    print("| cut | sparsity (measured) | perplexity | vs dense | greedy agreement | "
          "identical prefix (min / median) | FFN bytes vs dense (predictor incl.) | "
          "predictor share of FFN FLOPs | precision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cut']:.2f} | {r['measured']:.3f} | {r['ppl']:.4f} | "
              f"{100 * (r['ppl_ratio'] - 1):+.1f}% | {100 * r['agreement']:.1f}% | "
              f"{r['prefix_min']} / {r['prefix_median']} | {100 * r['ffn_bytes']:.0f}% | "
              f"{100 * r['pred_flops_share']:.1f}% | {100 * r['precision']:.1f}% |")
    os.makedirs(os.path.dirname(a.csv) or ".", exist_ok=True)
    with open(a.csv, "w") as f:
        f.write("cut,measured,perplexity,ppl_ratio,agreement,prefix_min,prefix_median,ffn_bytes,"
                "pred_flops_share,precision\n")
        for r in rows:
            f.write(f"{r['cut']},{r['measured']:.4f},{r['ppl']:.4f},{r['ppl_ratio']:.4f},"
                    f"{r['agreement']:.4f},{r['prefix_min']},{r['prefix_median']},"
                    f"{r['ffn_bytes']:.4f},{r['pred_flops_share']:.4f},{r['precision']:.4f}\n")
    gp = f"""set terminal svg size 760,440 dynamic font 'sans,12'
set output '{a.plot}'
set datafile separator ','
set title 'stories260K: predictor (rank {a.rank}) vs threshold sparsity, quality against measured sparsity'
set xlabel 'FFN neurons skipped per token (measured)'
set ylabel 'perplexity relative to dense (log scale)'
set logscale y
set y2label 'greedy agreement with dense (256 tokens x {len(PROMPTS)} prompts)'
set ytics nomirror
set y2tics
set y2range [0:1.05]
set xrange [0:1]
set key top left
set grid
plot '{a.csv}' every ::1 using 2:4 with linespoints lw 2 pt 7 lc rgb '#c0392b' title 'predictor: perplexity / dense', \\
     '' every ::1 using 2:5 axes x1y2 with linespoints lw 2 pt 5 dt 2 lc rgb '#c0392b' title 'predictor: greedy agreement', \\
     '{a.threshold_csv}' every ::1 using 3:5 with linespoints lw 2 pt 7 lc rgb '#2471a3' title 'threshold: perplexity / dense', \\
     '' every ::1 using 3:6 axes x1y2 with linespoints lw 2 pt 5 dt 2 lc rgb '#2471a3' title 'threshold: greedy agreement'
"""
    subprocess.run(["gnuplot"], input=gp, text=True, check=True)
    print(f"wrote {a.csv} and {a.plot}")


if __name__ == "__main__":
    main()
