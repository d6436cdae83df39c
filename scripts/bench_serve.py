#!/usr/bin/env python3
"""Aggregate decode throughput of an OpenAI-compatible server against concurrency.

For each concurrency C, C clients each send `--requests` completions, one after the other, of a
fixed prompt with `max_tokens` N (temperature 0, ignore_eos so that every request produces N
tokens; flashlm serve and llama-server both accept it), all at once; the figure is the tokens
generated (usage.completion_tokens, summed) over the wall time from the first request to the last
answer. Works against `flashlm serve` and `llama-server` alike (start either with --parallel/-np
at least the largest concurrency), so both are measured by the same client.

Usage: scripts/bench_serve.py --url http://127.0.0.1:8080 [--concurrency 1,2,4,8]
           [--tokens 64] [--requests 2] [--prompt TEXT] [--json OUT]

Launch mode (the issue-13 benchmark; needs root): with --servers, the script starts each server
itself, once per concurrency C and repetition, inside the cgroup v1 memory group of
scripts/bench_ooc.py limited to --fraction % of the GGUF's size, with the page cache dropped just
before the start; waits for /health, warms up, measures the point, stops the server (SIGTERM):
  flashlm        flashlm serve STORE --parallel C --ctx CTX --threads T
                     --mem-budget (BUDGET - --overhead-mib) [--sparsity S]
  llama          llama-server -m GGUF -np C -c (C x CTX) -t T -tb T -b 128 -ub 128
  (flashlm-relu / llama-relu: the same on --relu-store / --relu-gguf)
The servers take turns going first from one repetition to the next. Reported: medians over the
repetitions of tok/s, of the ratio to the same server's C=1 figure and of flashlm / llama-server
per repetition; the group's peak memory; for flashlm, from /stats, sequences and MiB read per
forward pass, ms per pass and the share of it spent waiting for reads.
  scripts/bench_serve.py --servers flashlm,llama --flashlm build/flashlm --store S --gguf G
      [--relu-store S2 --relu-gguf G2] [--fraction 25] [--reps 3] [--raw out.jsonl]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ooc  # noqa: E402  (the cgroup and the page-cache drop)


def complete(url, prompt, tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        j = json.load(r)
    return j["usage"]["completion_tokens"], j.get("timings", {})


def point(url, prompt, tokens, clients, requests):
    done = [0] * clients
    errors = []

    def client(i):
        try:
            for _ in range(requests):
                n, _ = complete(url, prompt, tokens)
                done[i] += n
        except Exception as e:  # reported, not hidden
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    return {"concurrency": clients, "tokens": sum(done), "seconds": seconds,
            "tok_per_s": sum(done) / seconds if seconds > 0 else 0.0, "errors": errors}


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_healthy(url, proc, seconds):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.5)
    return False


def launch_point(a, kind, clients, port):
    """Starts server `kind` for `clients` sequences in the cgroup, measures one point, stops it."""
    relu = kind.endswith("-relu")
    gguf = a.relu_gguf if relu else a.gguf
    budget = os.path.getsize(gguf) * a.fraction // 100
    prefix = bench_ooc.confine(budget, a.cgroup)
    if kind.startswith("flashlm"):
        cmd = [a.flashlm, "serve", a.relu_store if relu else a.store, "--port", str(port),
               "--parallel", str(clients), "--ctx", str(a.ctx), "--threads", str(a.threads),
               "--mem-budget", str(budget - a.overhead_mib * 2**20)]
        if a.sparsity:
            cmd += ["--sparsity", a.sparsity]
    else:
        cmd = [a.llama_server, "-m", gguf, "--port", str(port), "-np", str(clients), "-c",
               str(clients * a.ctx), "-t", str(a.threads), "-tb", str(a.threads)] + a.llama_args.split()
    bench_ooc.drop_caches()
    log = open(a.log, "a") if a.log else subprocess.DEVNULL
    if a.log:
        log.write("\n$ %s\n" % " ".join(cmd))
        log.flush()
    proc = subprocess.Popen(prefix + cmd, stdout=log, stderr=log)
    url = "http://127.0.0.1:%d" % port
    try:
        if not wait_healthy(url, proc, a.load_timeout):
            return {"error": "server did not become healthy (exit %s)" % proc.poll()}
        complete(url, a.prompt, 4)  # warm-up
        before = get_json(url + "/stats") if kind.startswith("flashlm") else None
        p = point(url, a.prompt, a.tokens, clients, a.requests)
        if before is not None:
            after = get_json(url + "/stats")
            d = {k: after[k] - before[k] for k in ("passes", "pass_sequences", "bytes_read",
                                                   "forward_ms", "io_wait_ms")}
            n = max(d["passes"], 1)
            p.update({"sequences_per_pass": d["pass_sequences"] / n,
                      "mib_per_pass": d["bytes_read"] / n / 2**20,
                      "ms_per_pass": d["forward_ms"] / n,
                      "io_wait_share": d["io_wait_ms"] / d["forward_ms"] if d["forward_ms"] else 0,
                      "peak_rss": after["peak_rss_bytes"], "planned": after["planned_bytes"]})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    p["cgroup_peak"] = bench_ooc.cgroup_peak(a.cgroup)
    p["budget"] = budget
    return p


def launch(a):
    kinds = a.servers.split(",")
    conc = [int(x) for x in a.concurrency.split(",")]
    res = {}
    raw = open(a.raw, "a") if a.raw else None
    port = a.port
    for rep in range(a.rep_offset, a.rep_offset + a.reps):
        order = kinds if rep % 2 == 0 else list(reversed(kinds))
        for c in conc:
            for kind in order:
                port += 1
                p = launch_point(a, kind, c, port)
                p.update({"server": kind, "rep": rep, "concurrency": c})
                res.setdefault((kind, c), []).append(p)
                print(json.dumps(p), file=sys.stderr)
                if raw:
                    raw.write(json.dumps(p) + "\n")
                    raw.flush()
    return report(res, kinds, conc)


def report(res, kinds, conc):
    """Prints the table of the points res[(server, concurrency)] (lists over repetitions)."""
    def ok(kind, c):
        return [p for p in res.get((kind, c), []) if "error" not in p and not p.get("errors")]

    def med(rows, key):
        vals = [r[key] for r in rows if key in r]
        return statistics.median(vals) if vals else None

    print("| server | concurrency | tok/s (median) | vs its C=1 | flashlm / llama-server "
          "| seq per pass | MiB read per pass | ms per pass | read wait share "
          "| cgroup peak - budget |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for c in conc:
            rows = ok(kind, c)
            if not rows:
                errs = [p.get("error") or p.get("errors") for p in res.get((kind, c), [])]
                print("| %s | %d | failed: %s | | | | | | | |" % (kind, c, errs[:1]))
                continue
            base = {r["rep"]: r["tok_per_s"] for r in ok(kind, conc[0])}
            vs1 = [r["tok_per_s"] / base[r["rep"]] for r in rows if base.get(r["rep"])]
            # The peer: llama-server on the same GGUF, else (flashlm-relu without llama-relu)
            # llama-server on the dense GGUF of the same shape and dtype.
            peer = kind.replace("flashlm", "llama") if kind.startswith("flashlm") else None
            if peer and peer not in kinds:
                peer = "llama"
            peer_rows = {r["rep"]: r["tok_per_s"] for r in ok(peer, c)} if peer else {}
            vs_peer = [r["tok_per_s"] / peer_rows[r["rep"]] for r in rows
                       if peer_rows.get(r["rep"])]
            fl = kind.startswith("flashlm")
            print("| %s | %d | %.2f | %s | %s | %s | %s | %s | %s | %+.1f MiB |" % (
                kind, c, med(rows, "tok_per_s"),
                "%.2fx" % statistics.median(vs1) if vs1 else "",
                "%.2fx" % statistics.median(vs_peer) if vs_peer else "",
                "%.2f" % med(rows, "sequences_per_pass") if fl else "",
                "%.0f" % med(rows, "mib_per_pass") if fl else "",
                "%.0f" % med(rows, "ms_per_pass") if fl else "",
                "%.0f%%" % (100 * med(rows, "io_wait_share")) if fl else "",
                (med(rows, "cgroup_peak") - rows[0]["budget"]) / 2**20))
    return 1 if any(not ok(k, c) for k in kinds for c in conc) else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--json", help="write the points as JSON")
    ap.add_argument("--servers", help="launch mode: flashlm,llama,flashlm-relu,llama-relu")
    ap.add_argument("--flashlm", default="build/flashlm")
    ap.add_argument("--llama-server", default="/work/llama.cpp/build/bin/llama-server")
    ap.add_argument("--llama-args", default="-b 128 -ub 128",
                    help="more llama-server flags (default: flashlm's 128 tokens per pass; "
                         "llama-server's own 512-token micro-batch reserves 49 MiB of compute "
                         "buffer inside the budget)")
    ap.add_argument("--store")
    ap.add_argument("--gguf")
    ap.add_argument("--relu-store")
    ap.add_argument("--relu-gguf")
    ap.add_argument("--sparsity", help="flashlm --sparsity (default: its own, auto)")
    ap.add_argument("--fraction", type=int, default=25, help="budget, %% of the GGUF's size")
    ap.add_argument("--overhead-mib", type=int, default=24,
                    help="flashlm's --mem-budget is the cgroup limit minus this")
    ap.add_argument("--cgroup", default=bench_ooc.CGROUP)
    ap.add_argument("--ctx", type=int, default=256, help="context per sequence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--rep-offset", type=int, default=0,
                    help="number of the first repetition (a later run goes on alternating)")
    ap.add_argument("--port", type=int, default=18400)
    ap.add_argument("--load-timeout", type=int, default=600)
    ap.add_argument("--raw", help="append every point as a JSON line (with --from-raw, reread)")
    ap.add_argument("--log", help="append the servers' output here")
    ap.add_argument("--from-raw", help="only the table, from the --raw lines of earlier runs")
    a = ap.parse_args()
    if a.from_raw:
        res, kinds, conc = {}, [], []
        for line in open(a.from_raw):
            p = json.loads(line)
            res.setdefault((p["server"], p["concurrency"]), []).append(p)
            if p["server"] not in kinds:
                kinds.append(p["server"])
            if p["concurrency"] not in conc:
                conc.append(p["concurrency"])
        return report(res, kinds, sorted(conc))
    if a.servers:
        return launch(a)
    complete(a.url, a.prompt, 4)  # warm-up
    points = []
    print("concurrency  tokens  seconds   tok/s  vs 1")
    for c in [int(x) for x in a.concurrency.split(",")]:
        p = point(a.url, a.prompt, a.tokens, c, a.requests)
        points.append(p)
        base = points[0]["tok_per_s"]
        print(f"{c:11d} {p['tokens']:7d} {p['seconds']:8.2f} {p['tok_per_s']:7.1f} "
              f"{p['tok_per_s'] / base if base else 0:5.2f}x" +
              (f"  ERRORS: {p['errors'][:2]}" if p["errors"] else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(points, f, indent=1)
    return 1 if any(p["errors"] for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
