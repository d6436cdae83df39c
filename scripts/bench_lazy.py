#!/usr/bin/env python3
"""LazyLLM prefill benchmark (issue 12): TTFT vs quality on stories260K, TTFT on a synth 110m.

Usage: scripts/bench_lazy.py OUT_DIR [--synth GGUF]
Text: stories260K's own samples (OUT_DIR/s1..s4.txt, 500 tokens each, temp 1, seeds 1-4).
Quality: perplexity of the last 100 tokens of each 500-token window given the first 400
(flashlm perplexity --prompt-tokens 400), greedy agreement of 64 tokens with exact prefill.
TTFT: flashlm generate -n 1, medians of REPS runs, exact and lazy alternated back to back.
"""
import json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FL = os.path.join(ROOT, "build", "flashlm")
M = os.path.join(ROOT, "..", "shared", "models", "stories260K")
MODEL = [os.path.join(M, "stories260K.bin"), "--tokenizer", os.path.join(M, "tok512.bin")]
KEEPS = [float(k) for k in os.environ.get("KEEPS", "1.0,0.5,0.3,0.1").split(",")]
SCHEDULES = {"default (1,2,3)": None, "from layer 0 (0,1,2,3)": "0,1,2,3", "once, after layer 0 (0)": "0"}
if os.environ.get("SCHEDULES"):
    SCHEDULES = {k: v for k, v in SCHEDULES.items() if os.environ["SCHEDULES"] in k}
REPS = int(os.environ.get("REPS", "3"))


def run(args):
    r = subprocess.run([FL] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(args), r.stderr))
    return r


def lazy_flags(keep, layers):
    f = ["--lazy-prefill", str(keep)]
    if keep < 1.0 and layers:
        f += ["--lazy-layers", layers]
    return f


def generate(prompt, keep, layers, n, stats):
    run(["generate"] + MODEL + ["-p", prompt, "-n", str(n), "--temp", "0", "--ignore-eos",
                                "--ctx", "512", "--max-batch", "512", "--threads", "1",
                                "--stats-json", stats] + lazy_flags(keep, layers))
    return json.load(open(stats))


def main():
    out = sys.argv[1]
    synth = sys.argv[sys.argv.index("--synth") + 1] if "--synth" in sys.argv else None
    os.makedirs(out, exist_ok=True)
    samples = []
    for s in range(1, 5):
        path = os.path.join(out, "s%d.txt" % s)
        if not os.path.exists(path):
            r = run(["generate"] + MODEL + ["-p", "Once upon a time", "-n", "500", "--temp", "1.0",
                                            "--seed", str(s), "--ctx", "512", "--ignore-eos"])
            open(path, "w").write(r.stdout)
        samples.append(open(path).read())
    text = os.path.join(out, "all.txt")
    open(text, "w").write("".join(samples))
    # Prompts of 300-500 tokens: each sample's first ~400 tokens (cut at a word).
    prompts = []
    for s in samples:
        words = s.split()
        prompts.append(" ".join(words[: int(len(words) * 0.8)]))
    stats = os.path.join(out, "stats.json")
    rows = []
    for sname, layers in SCHEDULES.items():
        for keep in KEEPS:
            if keep == 1.0 and layers:
                continue
            r = run(["perplexity"] + MODEL + ["--text", text, "--ctx", "500", "--prompt-tokens",
                                              "400", "--max-batch", "512", "--threads", "1"] +
                    lazy_flags(keep, layers))
            ppl = float(r.stdout.split()[1])
            agree, ttft_ratio, flops, ptoks = [], [], [], []
            for p in prompts:
                ref = generate(p, 1.0, None, 64, stats)
                got = generate(p, keep, layers, 64, stats)
                a = 0
                while a < 64 and ref["ids"][len(ref["ids"]) - 64 + a] == got["ids"][len(got["ids"]) - 64 + a]:
                    a += 1
                agree.append(a)
                ptoks.append(ref["prompt_tokens"])
                # TTFT (-n 1: prefill and the first token), exact and lazy alternated.
                te, tl = [], []
                for _ in range(REPS):
                    te.append(generate(p, 1.0, None, 1, stats)["ttft_ms"])
                    g = generate(p, keep, layers, 1, stats)
                    tl.append(g["ttft_ms"])
                    if g.get("lazy"):
                        flops.append(g["lazy"]["flops"] / g["lazy"]["dense_flops"])
                ttft_ratio.append(statistics.median(te) / statistics.median(tl))
            rows.append({"schedule": sname, "keep": keep, "ppl": ppl,
                         "agree": statistics.mean(agree), "agree_min": min(agree),
                         "speedup": statistics.median(ttft_ratio),
                         "flops": statistics.mean(flops) if flops else 1.0,
                         "prompt_tokens": ptoks})
            print(json.dumps(rows[-1]), flush=True)
    json.dump(rows, open(os.path.join(out, "stories260k-%s.json" % os.environ.get("TAG", "all")), "w"), indent=1)
    if synth:
        srows = []
        for n in (1536,):
            for keep, layers in ((0.25, None), (0.25, "0,1,2,3,4,5,6,7,8,9,10")):
                te, tl = [], []
                for _ in range(2):
                    for k, lay, acc in ((1.0, None, te), (keep, layers, tl)):
                        run(["generate", synth, "--bench-prompt-tokens", str(n), "-n", "1",
                             "--ctx", "2048", "--max-batch", "2048", "--threads", "2",
                             "--stats-json", stats] + lazy_flags(k, lay))
                        acc.append(json.load(open(stats)))
                srows.append({"prompt": n, "keep": keep, "layers": layers or "default (3..10)",
                              "ttft_exact_ms": statistics.median(x["ttft_ms"] for x in te),
                              "ttft_lazy_ms": statistics.median(x["ttft_ms"] for x in tl),
                              "flops": tl[-1]["lazy"]["flops"] / tl[-1]["lazy"]["dense_flops"]})
                print(json.dumps(srows[-1]), flush=True)
        json.dump(srows, open(os.path.join(out, "synth110m.json"), "w"), indent=1)


main()
