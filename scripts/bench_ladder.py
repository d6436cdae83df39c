#!/usr/bin/env python3
"""The sparse-FFN ablation ladder (issue 10): flashlm configurations from dense streaming to every
feature on, at several budgets, with llama.cpp (mmap, same GGUF, same memory cgroup) in the same
run. Every run drops the page cache first; configurations take turns in a rotated order per
repetition, so that none always runs first after the drop.

Rows (each adds one thing to the row above; all on one hot-first gate+up-down store):
  dense        --sparsity dense                          every bundle read every token
  separate     --sparsity relu --split-bundle-reads --cache-share 0
                                                         only firing neurons, one read per matrix
                                                         row (what separate up and down matrices
                                                         would cost: same bytes, twice the reads)
  bundles      --sparsity relu --no-coalesce --cache-share 0
                                                         one read per bundle
  merged       --sparsity relu --merge-gap 0 --cache-share 0
                                                         touching bundles merged into one read
  cache        ... --merge-gap 0 --cache-share S --window K
                                                         LRU share for streamed bundles + window
  gap          ... --merge-gap G                          misses merged across gaps of G bytes
  naive        the gap row with --no-pipeline            (what the read-ahead ring is worth)
  lookahead    the gap row with --lookahead L            the store's predictor (flashlm
                                                         train-predictor) guesses each layer's
                                                         bundles from its input and they are read
                                                         while its attention computes (exact: the
                                                         set still comes from the gate); only when
                                                         STORE/ffn_predictor.bin exists
With --predictor-store (a gate-up-down store of the same GGUF with a trained predictor, see
flashlm train-predictor), one more row per --predictor-cuts value:
  predictor    --sparsity predictor --predictor-cut C --merge-gap G on that store
                                                         no dense gate: a predicted neuron is one
                                                         read (approximate; recall < 1)
  + lookahead  the same with --lookahead C                its reads go out before the attention

Per run: flashlm generate -p PROMPT -n N --temp 0 --ignore-eos --ctx 256 --threads T
--mem-budget B --stats-json F; figures per forward pass from the stats (the prompt is one pass of
N + 1), with the attention layers' bytes and the FFN and attention waits apart (io.by_source). llama.cpp: llama-bench -p 0 -n N in a cgroup-v1 memory group limited to B.

Needs root (drop_caches, cgroups). Wrap in `flock /work/notes/bench.lock` on a shared disk.
Usage: scripts/bench_ladder.py --store STORE --gguf GGUF [--fractions 10,25,50] [--reps 3]
       [-n 16] [--window 4] [--cache-share 0.5] [--gap 16K] [--extra-gaps 0,4K,16K,64K]
       [--predictor-store STORE --predictor-cuts 0.2,0.5] [--lookahead 0.5] [--raw out.jsonl]
       [--verify-reads every|first]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ooc import drop_caches, med, run_fio, run_llama  # noqa: E402


def run_flashlm(exe, store, budget, n, threads, flags):
    store, flags = (flags[0][1], flags[1:]) if flags and isinstance(flags[0], tuple) else (store,
                                                                                           flags)
    drop_caches()
    with tempfile.NamedTemporaryFile(suffix=".json") as js:
        cmd = [exe, "generate", store, "-p", "Once upon a time", "-n", str(n), "--temp", "0",
               "--ignore-eos", "--ctx", "256", "--threads", str(threads), "--mem-budget",
               str(budget), "--stats-json", js.name] + flags
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
        st = json.load(open(js.name))
    io, ffn = st["io"], st.get("ffn", {})
    by = io.get("by_source", {})
    passes = max(io["passes"], 1)
    forward_ms = st["prefill_ms"] + st["decode_ms"]
    return {
        "decode_tok_s": st["decode_tokens_per_s"],
        "bytes_per_pass": io["bytes_read"] / passes,
        "reads_per_pass": io["reads"] / passes,
        "mean_read_bytes": io["mean_read_bytes"],
        "mib_s": io["effective_mib_per_s"],
        "io_share": io["io_wait_ms"] / forward_ms if forward_ms > 0 else 0,
        "hit_rate": io["cache_hit_rate"],
        "computed": io["ffn_neurons_computed"] / max(io["ffn_neurons_total"], 1),
        "ffn_bytes_per_pass": ffn.get("bytes_read", 0) / passes,
        "ffn_reads_per_pass": ffn.get("reads", 0) / passes,
        "ffn_amplification": ffn.get("read_amplification", 0),
        "lru_hits": ffn.get("bundles_cached", 0) / passes,
        "precision": (ffn.get("predictor") or {}).get("precision"),
        "prefetched_per_pass": ffn.get("bundles_prefetched", 0) / passes,
        "prefetch_used": ffn.get("prefetch_used", 0) / max(ffn.get("bundles_prefetched", 0), 1),
        "io_wait_ms_per_pass": io["io_wait_ms"] / passes,
        # Where the bytes and the waits went (flashlm's io by source).
        "attention_mib_per_pass": by.get("attention", {}).get("bytes_read", 0) / passes / 2**20,
        "attention_wait_ms_per_pass": by.get("attention", {}).get("wait_ms", 0) / passes,
        "ffn_wait_ms_per_pass": by.get("ffn", {}).get("wait_ms", 0) / passes,
        "compute_ms_per_pass": (forward_ms - io["io_wait_ms"]) / passes,
        "ids": st.get("ids", [])[st.get("prompt_tokens", 0):],  # the generated ones
        "text": " ".join(p.stderr.splitlines()[-3:]),
    }


def run_fio_random(path, bs, depth):
    """fio random reads of `bs` at `depth` over the whole file, 10 s, page cache dropped."""
    drop_caches()
    p = subprocess.run(["fio", "--name=rand", "--filename=" + path, "--rw=randread", "--bs=" + bs,
                        "--iodepth=%d" % depth, "--ioengine=io_uring", "--direct=1", "--readonly",
                        "--runtime=10", "--time_based", "--output-format=json"],
                       check=True, capture_output=True, text=True)
    return json.loads(p.stdout)["jobs"][0]["read"]["bw_bytes"] / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-bench", default="/work/llama.cpp/build/bin/llama-bench")
    ap.add_argument("--store", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fractions", default="10,25,50")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", default="4")
    ap.add_argument("--cache-share", default="0.5")
    ap.add_argument("--gap", default="16K")
    ap.add_argument("--extra-gaps", default="", help="gaps also run at --gap-fraction (a sweep)")
    ap.add_argument("--gap-fraction", type=int, default=25)
    ap.add_argument("--predictor-store", help="gate-up-down store with ffn_predictor.bin")
    ap.add_argument("--predictor-cuts", default="0.2,0.5")
    ap.add_argument("--lookahead", default="0.5", help="the lookahead row's cut (relu store)")
    ap.add_argument("--rows", default="", help="run only rows whose name contains one of these "
                    "comma-separated words (dense streaming always runs: the ratios' reference)")
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument("--verify-reads", default="every", choices=["every", "first"],
                    help="flashlm's checksums on every read (its default) or on each extent's "
                    "first read only, for every row")
    ap.add_argument("--raw", help="append every measurement as a JSON line to this file")
    a = ap.parse_args()
    relu = ["--sparsity", "relu"]
    cache = ["--cache-share", a.cache_share, "--window", a.window]
    rows = [
        ("dense streaming", ["--sparsity", "dense", "--cache-share", "0"]),
        ("+ sparsity (separate matrices: a read per row)",
         relu + ["--split-bundle-reads", "--cache-share", "0"]),
        ("+ bundles (one read per bundle)", relu + ["--no-coalesce", "--cache-share", "0"]),
        ("+ touching bundles merged", relu + ["--merge-gap", "0", "--cache-share", "0"]),
        ("+ LRU cache and window", relu + ["--merge-gap", "0"] + cache),
        ("+ gap merging", relu + ["--merge-gap", a.gap] + cache),
        ("  (same, --no-pipeline)", relu + ["--merge-gap", a.gap, "--no-pipeline"] + cache),
    ]
    if os.path.exists(os.path.join(a.store, "ffn_predictor.bin")):
        rows.append(("+ lookahead (the predictor's guess read during the attention)",
                     relu + ["--merge-gap", a.gap, "--lookahead", a.lookahead] + cache))
    if a.predictor_store:
        for c in a.predictor_cuts.split(","):
            if not c:
                continue
            flags = [("store", a.predictor_store), "--sparsity", "predictor", "--predictor-cut", c,
                     "--merge-gap", a.gap, "--cache-share", "0"]
            rows += [("predictor cut %s (gate-up-down bundles)" % c, flags),
                     ("predictor cut %s + lookahead" % c, flags + ["--lookahead", c])]
    rows = [(name, flags + ["--verify-reads", a.verify_reads]) for name, flags in rows]
    if a.rows:
        words = a.rows.split(",")
        rows = [r for r in rows if r[0] == "dense streaming" or any(w in r[0] for w in words)]
    sweep = [("gap " + g, relu + ["--merge-gap", g, "--verify-reads", a.verify_reads] + cache)
             for g in a.extra_gaps.split(",") if g]
    model = os.path.getsize(a.gguf)
    fractions = [int(x) for x in a.fractions.split(",")]
    res = {}
    raw = open(a.raw, "a") if a.raw else None

    def record(kind, frac, r):
        res.setdefault((kind, frac), []).append(r)
        if raw:
            raw.write(json.dumps({"kind": kind, "fraction": frac, **r}) + "\n")
            raw.flush()
        print(kind, frac, {k: v for k, v in r.items() if k != "text"}, file=sys.stderr)

    data_path = os.path.join(a.store, sorted(f for f in os.listdir(a.store)
                                             if f.startswith("data-"))[0])
    for rep in range(a.reps):
        # The disk's own figures on the store's data file, in the same run: a virtual disk whose
        # host caches recently written files can serve flashlm faster than fio's sequential rate,
        # which these rows show.
        record("fio seq 1M QD32", 0, {"mib_s": run_fio(data_path, 32)})
        record("fio rand 16K QD32", 0, {"mib_s": run_fio_random(data_path, "16k", 32)})
        for frac in fractions:
            budget = model * frac // 100
            runs = list(rows) + (sweep if frac == a.gap_fraction else [])
            if not a.no_llama:
                runs.append(("llama.cpp (mmap, same cgroup)", None))
            k = rep % len(runs)
            for name, flags in runs[k:] + runs[:k]:
                if flags is None:
                    record(name, frac, run_llama(a.llama_bench, a.gguf, budget, a.n, a.threads))
                else:
                    record(name, frac,
                           run_flashlm(a.flashlm, a.store, budget, a.n, a.threads, flags))

    print("fio on %s, median MiB/s: sequential 1 MiB QD32 %.0f, random 16 KiB QD32 %.0f" % (
        data_path, med(res[("fio seq 1M QD32", 0)], "mib_s"),
        med(res[("fio rand 16K QD32", 0)], "mib_s")))
    for frac in fractions:
        budget = model * frac // 100
        ll = [r for r in res.get(("llama.cpp (mmap, same cgroup)", frac), []) if "error" not in r]
        l_tok = med(ll, "decode_tok_s")
        dense = [r for r in res[("dense streaming", frac)] if "error" not in r]
        d_tok = med(dense, "decode_tok_s")
        print("\n### %d%% of the GGUF (%.0f MiB)\n" % (frac, budget / 2**20))
        print("| row | MiB read/token | of which attention | reads/token | mean read KiB | MiB/s | "
              "hit rate | I/O share | wait ms/token: FFN / attention | neurons computed | "
              "same tokens as dense | tok/s | vs own dense | vs llama.cpp |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        ref_ids = dense[0]["ids"] if dense else []
        names = [r[0] for r in rows] + ([s[0] for s in sweep] if frac == a.gap_fraction else [])
        for name in names:
            ok = [r for r in res[(name, frac)] if "error" not in r]
            if not ok:
                print("| %s | %s |" % (name, res[(name, frac)][0]["error"]))
                continue
            tok = med(ok, "decode_tok_s")
            ids = ok[0]["ids"]
            same = sum(1 for x, y in zip(ids, ref_ids) if x == y) / max(len(ref_ids), 1)
            print("| %s | %.1f | %.1f | %.0f | %.1f | %.0f | %.1f%% | %.0f%% | %.1f / %.1f | %.1f%% "
                  "| %.0f%% | %.2f | %s | %s |" % (
                name, med(ok, "bytes_per_pass") / 2**20, med(ok, "attention_mib_per_pass"),
                med(ok, "reads_per_pass"), med(ok, "mean_read_bytes") / 1024, med(ok, "mib_s"),
                100 * med(ok, "hit_rate"), 100 * med(ok, "io_share"),
                med(ok, "ffn_wait_ms_per_pass"), med(ok, "attention_wait_ms_per_pass"),
                100 * med(ok, "computed"),
                100 * same, tok,
                "%.2fx" % (tok / d_tok) if d_tok else "",
                "%.2fx" % (tok / l_tok) if l_tok else ""))
        if not a.no_llama:
            print("| llama.cpp (mmap, same cgroup) | | | | | | | | | | | %s | | |" % (
                "%.2f" % l_tok if l_tok else "failed: " + res[("llama.cpp (mmap, same cgroup)",
                                                               frac)][0].get("error", "")))


if __name__ == "__main__":
    main()
