set terminal svg size 720,440 font "sans,12"
set output "docs/plots/lazy-prefill-stories260k.svg"
set title "LazyLLM prefill, stories260K (labels: KEEP, mean greedy agreement /64)"
set xlabel "TTFT speed-up over exact prefill (median ratio, back to back)"
set ylabel "perplexity change of the held-out continuation (%)"
set grid
set key bottom right
set xrange [0.9:2.2]
set yrange [-0.8:3.4]
set arrow from 2.0, graph 0 to 2.0, graph 1 nohead dt 2 lc rgb "gray"
set arrow from graph 0, first 1.0 to graph 1, first 1.0 nohead dt 2 lc rgb "gray"
plot "docs/plots/lazy-default.dat" using 1:2 with linespoints pt 7 title "layers 1,2,3 (default)", \
     "" using 1:2:(sprintf("%s (%d/64)", stringcolumn(4), int($3))) with labels offset 0,1 font ",9" notitle, \
     "docs/plots/lazy-from.dat" using 1:2 with linespoints pt 5 title "layers 0,1,2,3", \
     "" using 1:2:(sprintf("%s (%d/64)", stringcolumn(4), int($3))) with labels offset 0,-1 font ",9" notitle, \
     "docs/plots/lazy-once.dat" using 1:2 with linespoints pt 9 title "layer 0 only", \
     "" using 1:2:(sprintf("%s (%d/64)", stringcolumn(4), int($3))) with labels offset 0,1 font ",9" notitle
