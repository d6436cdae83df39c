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
"""
import argparse
import json
import sys
import threading
import time
import urllib.request


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--json", help="write the points as JSON")
    a = ap.parse_args()
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
