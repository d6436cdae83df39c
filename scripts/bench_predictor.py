#!/usr/bin/env python3
"""Predictor sparsity out of core (issue 10): flashlm dense streaming, relu sparsity and
predictor sparsity on the same ReLU model at one budget, with llama.cpp (mmap, same GGUF, same
memory cgroup) in the same run. Every run drops the page cache first; rows take turns in a rotated
order per repetition.

Rows:
  dense      --sparsity dense on the gate-up-down store   every bundle read every token
  relu       --sparsity relu on the gate+up-down store    dense gate first (exact), then the
                                                           firing neurons' [up | down]
  predictor  --sparsity predictor --predictor-cut P on the gate-up-down store
                                                           the predicted neurons' whole bundles,
                                                           one read each, no gate (approximate)
Every flashlm row: --merge-gap 16K (the default), --cache-share 0 (the default), pipelined.
Per run: flashlm generate -p "Once upon a time" -n N --temp 0 --ignore-eos --ctx 256 --threads T
--mem-budget B --stats-json F (scripts/bench_ladder.py's run_flashlm); llama-bench -p 0 -n N in a
cgroup-v1 memory group limited to B.

Needs root (drop_caches, cgroups). Wrap in `flock /work/notes/bench.lock`.
Usage: scripts/bench_predictor.py --gud STORE --gsep STORE --gguf GGUF [--fraction 40]
       [--cuts 0.5] [--reps 3] [-n 16] [--raw out.jsonl]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ooc import med, run_llama  # noqa: E402
from bench_ladder import run_flashlm  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-bench", default="/work/llama.cpp/build/bin/llama-bench")
    ap.add_argument("--gud", required=True, help="gate-up-down store (dense, predictor)")
    ap.add_argument("--gsep", required=True, help="gate+up-down store (relu)")
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fraction", type=int, default=40)
    ap.add_argument("--cuts", default="0.5")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw")
    a = ap.parse_args()
    rows = [("dense streaming (gate-up-down)", a.gud, ["--sparsity", "dense"]),
            ("relu (gate+up-down, exact)", a.gsep, ["--sparsity", "relu"])]
    for c in a.cuts.split(","):
        rows.append((f"predictor cut {c} (gate-up-down)", a.gud,
                     ["--sparsity", "predictor", "--predictor-cut", c]))
    budget = os.path.getsize(a.gguf) * a.fraction // 100
    res = {}
    raw = open(a.raw, "a") if a.raw else None
    for rep in range(a.reps):
        order = rows[rep % len(rows):] + rows[:rep % len(rows)]
        runs = [(name, store, flags) for name, store, flags in order] + [("llama.cpp", None, None)]
        for name, store, flags in runs:
            if store is None:
                r = run_llama(a.llama_bench, a.gguf, budget, a.n, a.threads) \
                    if os.path.exists(a.llama_bench) else {"error": "no llama-bench"}
            else:
                r = run_flashlm(os.path.abspath(a.flashlm), store, budget, a.n, a.threads, flags)
            r["row"], r["rep"], r["budget"] = name, rep, budget
            res.setdefault(name, []).append(r)
            print(json.dumps(r), file=sys.stderr)
            if raw:
                raw.write(json.dumps(r) + "\n")
                raw.flush()
    print(f"budget {budget / 2**20:.0f} MiB ({a.fraction}% of {os.path.basename(a.gguf)}), "
          f"{a.reps} repetitions, medians")
    print("| row | MiB read/token | reads/token | mean read | MiB/s | hit rate | I/O share | "
          "neurons computed | tok/s (each rep) | median tok/s | vs dense | vs llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ll = [r for r in res["llama.cpp"] if "error" not in r]
    l_tok = med(ll, "decode_tok_s")
    d_tok = med([r for r in res[rows[0][0]] if "error" not in r], "decode_tok_s")
    for name, _, _ in rows:
        ok = [r for r in res[name] if "error" not in r]
        if not ok:
            print(f"| {name} | failed: {res[name][0]['error']} |")
            continue
        t = med(ok, "decode_tok_s")
        print(f"| {name} | {med(ok, 'bytes_per_pass') / 2**20:.1f} | "
              f"{med(ok, 'reads_per_pass'):.0f} | {med(ok, 'mean_read_bytes') / 1024:.1f} KiB | "
              f"{med(ok, 'mib_s'):.0f} | {100 * med(ok, 'hit_rate'):.1f}% | "
              f"{100 * med(ok, 'io_share'):.0f}% | {100 * med(ok, 'computed'):.1f}% | "
              f"{', '.join('%.2f' % r['decode_tok_s'] for r in ok)} | {t:.2f} | "
              f"{t / d_tok:.2f}x | " + (f"{t / l_tok:.1f}x |" if l_tok else "- |"))
    print("| llama.cpp (mmap, same cgroup) | | | | | | | | " +
          (", ".join("%.2f" % r["decode_tok_s"] for r in ll) + f" | {l_tok:.2f} | | |"
           if l_tok else "failed: " + res["llama.cpp"][0].get("error", "?") + " | | | |"))


if __name__ == "__main__":
    main()
