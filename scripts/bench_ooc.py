#!/usr/bin/env python3
"""Out-of-core benchmark (issue 5): flashlm --mem-budget against llama.cpp (mmap) confined to the
same memory by a cgroup, and flashlm's read bandwidth against fio's sequential reads.

For each repetition and each budget (a fraction of the GGUF's size), back to back, with the page
cache dropped (echo 3 > /proc/sys/vm/drop_caches) before every run:
  /usr/bin/time -v flashlm generate STORE -p PROMPT -n N --temp 0 --ignore-eos --ctx 256
      --threads T --mem-budget BUDGET --stats-json FILE
  llama-bench -m GGUF -p 0 -n N -t T -r 1 -o json      (in a cgroup v1 memory group whose
      memory.limit_in_bytes is BUDGET; llama.cpp maps the GGUF, so its page cache is confined)
then, at the budgets in --naive, flashlm with --no-pipeline (its naive mode), and once per
repetition fio on the store's data file:
  fio --rw=read --bs=1M --iodepth=D --direct=1 --ioengine=io_uring   (D = 8 and 32)

Reported (medians over repetitions): decode tokens/s of both and their ratio; flashlm's delivered
read bandwidth while decoding (bytes read per forward pass x decode passes per second) and its
fraction of fio's best sequential figure; peak RSS (time -v) minus the budget.

Needs root (drop_caches, cgroups). Usage:
  scripts/bench_ooc.py --store build/1b-q8 --gguf synth-1b-q8_0.gguf [--fractions 10,25,50,100]
      [--reps 3] [-n 8] [--threads 2] [--llama-bench PATH] [--raw out.jsonl]
      [--compare OLD/flashlm [--compare-store STORE]]

--compare runs another flashlm binary (e.g. the previous commit's) at every budget of every
repetition too, the two taking turns going first, and adds its columns: a change measured
against what it replaces under the same disk and load.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

CGROUP = "/sys/fs/cgroup/memory/flashlm-bench"


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_flashlm(exe, store, budget, n, threads, naive):
    drop_caches()
    with tempfile.NamedTemporaryFile(suffix=".json") as js:
        cmd = ["/usr/bin/time", "-v", exe, "generate", store, "-p", "Once upon a time", "-n",
               str(n), "--temp", "0", "--ignore-eos", "--ctx", "256", "--threads", str(threads),
               "--mem-budget", str(budget), "--stats-json", js.name]
        if naive:
            cmd.append("--no-pipeline")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            m = re.search(r"minimum of ([0-9]+) bytes", p.stderr)
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed",
                    "minimum": int(m.group(1)) if m else None}
        stats = json.load(open(js.name))
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): ([0-9]+)", p.stderr).group(1))
    io = stats["io"]
    per_pass = io["bytes_read"] / max(io["passes"], 1)
    decode = stats["decode_tokens_per_s"]
    return {"decode_tok_s": decode, "prefill_tok_s": stats["prefill_tokens_per_s"],
            "bytes_per_pass": per_pass, "read_mib_s": per_pass * decode / 2**20,
            "mean_read_bytes": io["mean_read_bytes"], "peak_rss": rss_kib * 1024,
            "rss_over_budget": rss_kib * 1024 - budget}


def confine(budget, cgroup=CGROUP):
    """Sets up the cgroup v1 memory group `cgroup` with a limit of `budget` bytes (its peak usage
    reset) and returns the command prefix that runs a command inside it: the command's page cache
    (a mapped GGUF) and anonymous memory are charged to the group."""
    os.makedirs(cgroup, exist_ok=True)
    with open(os.path.join(cgroup, "memory.limit_in_bytes"), "w") as f:
        f.write(str(budget))
    with open(os.path.join(cgroup, "memory.max_usage_in_bytes"), "w") as f:
        f.write("0")
    return ["bash", "-c", 'echo $$ > %s/cgroup.procs && exec "$@"' % cgroup, "confined"]


def cgroup_peak(cgroup=CGROUP):
    """The group's peak memory usage (bytes) since confine() reset it."""
    with open(os.path.join(cgroup, "memory.max_usage_in_bytes")) as f:
        return int(f.read())


def run_llama(exe, gguf, budget, n, threads):
    prefix = confine(budget)
    drop_caches()
    p = subprocess.run(prefix + [exe, "-m", gguf, "-p", "0", "-n", str(n),
                                 "-t", str(threads), "-r", "1", "-o", "json"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    for row in json.loads(p.stdout):
        if row.get("n_gen") == n and row.get("n_prompt") == 0:
            return {"decode_tok_s": row["avg_ts"]}
    return {"error": "no tg row in llama-bench output"}


def run_fio(path, depth):
    drop_caches()
    size = os.path.getsize(path)
    p = subprocess.run(["fio", "--name=seq", "--filename=" + path, "--rw=read", "--bs=1M",
                        "--iodepth=%d" % depth, "--ioengine=io_uring", "--direct=1", "--readonly",
                        "--size=%d" % (size // 2**20 * 2**20), "--output-format=json"],
                       check=True, capture_output=True, text=True)
    return json.loads(p.stdout)["jobs"][0]["read"]["bw_bytes"] / 2**20


def med(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-bench", default="/work/llama.cpp/build/bin/llama-bench")
    ap.add_argument("--store", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fractions", default="10,25,50,100")
    ap.add_argument("--naive", default="25", help="fractions also run with --no-pipeline")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw", help="append every measurement as a JSON line to this file")
    ap.add_argument("--compare", help="another flashlm binary, run at the same budgets")
    ap.add_argument("--compare-store", help="the store the compared binary reads (default --store)")
    a = ap.parse_args()
    model = os.path.getsize(a.gguf)
    fractions = [int(x) for x in a.fractions.split(",")]
    naive = [int(x) for x in a.naive.split(",") if x]
    data_file = sorted(f for f in os.listdir(a.store) if f.startswith("data-"))[0]
    data_path = os.path.join(a.store, data_file)
    res = {}
    raw = open(a.raw, "a") if a.raw else None

    def record(kind, frac, r):
        res.setdefault((kind, frac), []).append(r)
        if raw:
            raw.write(json.dumps({"kind": kind, "fraction": frac, **r}) + "\n")
            raw.flush()
        print(kind, frac, r, file=sys.stderr)

    for rep in range(a.reps):
        for frac in fractions:
            budget = model * frac // 100
            # With --compare, the two binaries take turns going first: the host's cache behind a
            # virtual disk favours whichever reads the store second.
            runs = [("flashlm", a.flashlm, a.store)]
            if a.compare:
                runs.append(("compare", a.compare, a.compare_store or a.store))
                if rep % 2:
                    runs.reverse()
            for kind, exe, store in runs:
                record(kind, frac, run_flashlm(exe, store, budget, a.n, a.threads, False))
            record("llama", frac, run_llama(a.llama_bench, a.gguf, budget, a.n, a.threads))
            if frac in naive:
                record("naive", frac,
                       run_flashlm(a.flashlm, a.store, budget, a.n, a.threads, True))
        for depth in (8, 32):
            record("fio", depth, {"mib_s": run_fio(data_path, depth)})

    fio = max(med(res.get(("fio", d), []), "mib_s") or 0 for d in (8, 32))
    print("fio sequential 1 MiB reads, QD8 / QD32 median MiB/s: %.0f / %.0f" %
          (med(res[("fio", 8)], "mib_s"), med(res[("fio", 32)], "mib_s")))
    print()
    print("| budget | flashlm decode tok/s | llama.cpp decode tok/s | ratio | flashlm naive "
          "tok/s | read MiB/s while decoding | of fio | peak RSS - budget |" +
          (" compared tok/s | compared / llama.cpp | compared peak RSS - budget |"
           if a.compare else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if a.compare else ""))
    for frac in fractions:
        budget = model * frac // 100
        fl = [r for r in res[("flashlm", frac)] if "error" not in r]
        ll = [r for r in res[("llama", frac)] if "error" not in r]
        nv = [r for r in res.get(("naive", frac), []) if "error" not in r]
        label = "%d%% (%.1f MiB)" % (frac, budget / 2**20)
        if not fl:
            err = res[("flashlm", frac)][0]
            print("| %s | refused: %s | %s | | | | | |" % (
                label, "below the minimum of %.1f MiB" % (err["minimum"] / 2**20)
                if err.get("minimum") else err["error"],
                "%.2f" % med(ll, "decode_tok_s") if ll else "failed"))
            continue
        f_tok = med(fl, "decode_tok_s")
        l_tok = med(ll, "decode_tok_s") if ll else None
        ratios = [f["decode_tok_s"] / l["decode_tok_s"] for f, l in zip(fl, ll)]
        bw = med(fl, "read_mib_s")
        row = "| %s | %.2f | %s | %s | %s | %.0f | %s | %+.1f MiB |" % (
            label, f_tok, "%.2f" % l_tok if l_tok else "failed",
            "%.2fx" % statistics.median(ratios) if ratios else "",
            "%.2f" % med(nv, "decode_tok_s") if nv else "",
            bw, "%.0f%%" % (100 * bw / fio) if fio and bw > 1 else "",
            med(fl, "rss_over_budget") / 2**20)
        if a.compare:
            cm = [r for r in res.get(("compare", frac), []) if "error" not in r]
            c_ratios = [c["decode_tok_s"] / l["decode_tok_s"] for c, l in zip(cm, ll)]
            row += " %s | %s | %s |" % (
                "%.2f" % med(cm, "decode_tok_s") if cm else "refused",
                "%.2fx" % statistics.median(c_ratios) if c_ratios else "",
                "%+.1f MiB" % (med(cm, "rss_over_budget") / 2**20) if cm else "")
        print(row)


if __name__ == "__main__":
    main()
