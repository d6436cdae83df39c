"""Shared steps of the quality scripts (threshold_quality.py and predictor_quality.py; kv_quality.py
uses run): the texts sampled from the model, perplexity over a text, greedy runs over the
prompts, and how a mode's greedy runs compare with dense's. Every command is printed to stderr; a
failing one ends the run.
"""
import json
import os
import re
import subprocess
import sys

PROMPTS = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl named Sue",
           "Tom wanted to"]


def run(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p


def sample_text(exe, store, seeds, path):
    """500 tokens per seed from "Once upon a time" at temperature 1 (dense), one line each."""
    parts = []
    for s in seeds:
        p = run([exe, "generate", store, "-p", "Once upon a time", "-n", "500", "--temp", "1",
                 "--seed", str(s), "--ignore-eos", "--sparsity", "dense", "--threads", "2"])
        parts.append("Once upon a time" + p.stdout.rstrip("\n"))
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def perplexity(exe, store, text, flags):
    """flashlm perplexity over `text` with the mode's flags (e.g. ["--sparsity", "dense"])."""
    out = run([exe, "perplexity", store, "--text", text, "--threads", "2"] + flags).stdout
    return float(re.search(r"perplexity: ([0-9.]+)", out).group(1))


def greedy(exe, store, work, tag, flags):
    """Per prompt: 256 greedy tokens (resident, --stats-json); their ids, FFN neurons computed
    and total, and the predictor's stats when there are any."""
    runs = []
    for i, prompt in enumerate(PROMPTS):
        js = os.path.join(work, f"g-{tag}-{i}.json")
        run([exe, "generate", store, "-p", prompt, "-n", "256", "--temp", "0", "--ignore-eos",
             "--threads", "2", "--mem-budget", "0", "--stats-json", js] + flags)
        j = json.load(open(js))
        runs.append({"ids": j["ids"][-256:], "computed": j["io"]["ffn_neurons_computed"],
                     "total": j["io"]["ffn_neurons_total"],
                     "pred": (j.get("ffn") or {}).get("predictor") or {}})
    return runs


def against_dense(dense, runs):
    """Greedy agreement (share of positions equal to dense's), the identical prefixes' min and
    median, and the share of FFN neurons computed over the runs."""
    same = sum(x == y for d, r in zip(dense, runs) for x, y in zip(d["ids"], r["ids"]))
    positions = sum(len(d["ids"]) for d in dense)
    prefixes = []
    for d, r in zip(dense, runs):
        k = 0
        while k < len(d["ids"]) and d["ids"][k] == r["ids"][k]:
            k += 1
        prefixes.append(k)
    return {"agreement": same / positions, "prefix_min": min(prefixes),
            "prefix_median": sorted(prefixes)[len(prefixes) // 2],
            "computed": sum(r["computed"] for r in runs) / sum(r["total"] for r in runs)}
