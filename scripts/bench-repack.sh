#!/usr/bin/env bash
# Repack throughput against cp (docs/benchmarks.md, "Repack throughput against cp").
# Usage: scripts/bench-repack.sh [RUNS] [WORKDIR]   (root: drops the page cache before each run)
# Synthesises a 1B q8_0 GGUF under WORKDIR (default /work/bench) if absent, then alternates
# `flashlm repack` (which fsyncs its store) with `cp` and `cp; sync` of the same file, page cache
# dropped before each run, and prints each time and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=${2:-/work/bench}
bin=build/flashlm
src=$work/synth-1b-q8_0.gguf
mkdir -p "$work"
[[ -f $src ]] || $bin synth --shape 1b --dtype q8_0 --out "$src"
bytes=$(stat -c %s "$src")
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
declare -a t_repack t_cp t_cpsync t_cpu
for ((i = 0; i < runs; i++)); do
  rm -rf "$work/bench-store" "$work/bench-copy.gguf"
  drop; a=$(now)
  /usr/bin/time -f "%U %S" -o "$work/bench-cpu.txt" $bin repack --no-progress "$src" "$work/bench-store" > /dev/null
  b=$(now)
  t_repack+=("$(echo "$b - $a" | bc)")
  read -r u s < "$work/bench-cpu.txt"
  t_cpu+=("$(echo "$u + $s" | bc)")
  drop; a=$(now); cp "$src" "$work/bench-copy.gguf"; b=$(now)
  t_cp+=("$(echo "$b - $a" | bc)")
  rm -f "$work/bench-copy.gguf"
  drop; a=$(now); cp "$src" "$work/bench-copy.gguf"; sync; b=$(now)
  t_cpsync+=("$(echo "$b - $a" | bc)")
  echo "run $i: repack ${t_repack[-1]} s (cpu ${t_cpu[-1]} s), cp ${t_cp[-1]} s, cp+sync ${t_cpsync[-1]} s"
done
rm -rf "$work/bench-store" "$work/bench-copy.gguf" "$work/bench-cpu.txt"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mr=$(median "${t_repack[@]}"); mc=$(median "${t_cp[@]}"); ms=$(median "${t_cpsync[@]}")
mbs() { echo "scale=1; $bytes / 1000000 / $1" | bc; }
echo "source $src: $bytes bytes"
echo "median repack  $mr s ($(mbs "$mr") MB/s), user+sys cpu $(median "${t_cpu[@]}") s"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median cp      $mc s ($(mbs "$mc") MB/s)  repack/cp time ratio $(echo "scale=2; $mr / $mc" | bc)"
echo "median cp+sync $ms s ($(mbs "$ms") MB/s)  repack/(cp+sync) time ratio $(echo "scale=2; $mr / $ms" | bc)"
